"""Reference cellularity by hand, and the regression network learning it on real crops (smoke)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsipipe.nuclei.cellularity import cellularity_from_masks


def test_cellularity_by_hand():
    instances = np.zeros((10, 10), dtype=np.int32)
    instances[1:3, 1:3] = 1  # 4 px, all inside
    instances[6:9, 6:9] = 2  # 9 px, outside
    instances[4, 4:6] = 3  # 2 px, (4, 4) inside, (4, 5) outside
    tumour = np.zeros((10, 10), dtype=bool)
    tumour[:5, :5] = True  # 25 px
    # nuclear pixels inside the tumour: 4 + 1 = 5, over 25
    assert cellularity_from_masks(instances, tumour) == pytest.approx(5 / 25)
    assert cellularity_from_masks(instances, np.zeros_like(tumour)) is None
    assert cellularity_from_masks(np.zeros_like(instances), tumour) == 0.0
    # a nucleus larger than the tumour it is centred in covers it, no more: 1, not 9
    assert cellularity_from_masks(instances, instances == 2) == 1.0
    one = np.zeros_like(tumour)
    one[7, 7] = True
    assert cellularity_from_masks(instances, one) == 1.0
    # the whole image as tumour (training crops' scores): the nuclei area fraction, as before
    assert cellularity_from_masks(instances, np.ones_like(tumour)) == pytest.approx(15 / 100)


def test_regressor_learns_mask_cellularity_on_real_crops(cpm15_dir):
    """10 steps of the network on CPM-15 crops against their mask cellularity lower the L1 loss."""
    from wsipipe.models import build_model
    from wsipipe.models.cellularity import cellularity_loss
    from wsipipe.nuclei.data import load_cpm15

    samples = load_cpm15(cpm15_dir)[:3]
    crops, scores = [], []
    for sample in samples:
        for y, x in ((0, 0), (96, 96)):
            crop = sample.instances[y : y + 64, x : x + 64]
            crops.append(sample.rgb[y : y + 64, x : x + 64])
            scores.append(cellularity_from_masks(crop, np.ones_like(crop, dtype=bool)))
    x = torch.as_tensor(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor(scores, dtype=torch.float32)
    assert 0.05 < float(y.mean()) < 0.8
    torch.manual_seed(0)
    model = build_model("cellularity", 1, {"seg_encoder": "resnet18", "resnet": "resnet18", "hidden": 16})
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        optimiser.zero_grad()
        loss = cellularity_loss(model(x), y)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert min(losses[-3:]) < 0.7 * losses[0], losses  # untrained it stays at about 0.25
