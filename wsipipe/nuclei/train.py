"""Train US-Net on nuclei instance maps (CPM-15, MoNuSeg) and predict instances with it.

Training samples random crops (with flips and 90° rotations) from ``NucleiSample`` images at
their common µm/px, optimises ``USNetLoss`` with Adam, and returns the network; ``save_model``
with ``nuclei_model_metadata`` makes it a model file ``wsipipe nuclei --model`` runs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from wsipipe.nuclei.data import NucleiSample


def nuclei_model_metadata(args: dict, mpp: float, tile_size: int, **extra) -> dict:
    from wsipipe.models.io import model_metadata

    return model_metadata("usnet", args, ["nucleus"], mpp, tile_size, **extra)


def _crop(sample: NucleiSample, size: int, rng: np.random.Generator):
    height, width = sample.instances.shape
    pad_y, pad_x = max(0, size - height), max(0, size - width)
    rgb = np.pad(sample.rgb, ((0, pad_y), (0, pad_x), (0, 0)), constant_values=255)
    labels = np.pad(sample.instances, ((0, pad_y), (0, pad_x)))
    y = int(rng.integers(0, rgb.shape[0] - size + 1))
    x = int(rng.integers(0, rgb.shape[1] - size + 1))
    rgb, labels = rgb[y : y + size, x : x + size], labels[y : y + size, x : x + size]
    turns = int(rng.integers(0, 4))
    rgb, labels = np.rot90(rgb, turns), np.rot90(labels, turns)
    if rng.random() < 0.5:
        rgb, labels = rgb[:, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(rgb), np.ascontiguousarray(labels)


def train_usnet(
    samples: list[NucleiSample],
    args: dict | None = None,
    steps: int = 2000,
    batch_size: int = 8,
    crop: int = 256,
    lr: float = 1e-3,
    alpha: float = 1.0,
    beta: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
    on_step: Callable[[int, float], None] | None = None,
):
    """A US-Net trained for ``steps`` batches of random crops; returns it in eval mode."""
    import torch

    from wsipipe.models import build_model, resolve_args
    from wsipipe.models.io import IMAGENET_NORMALISATION
    from wsipipe.models.usnet import USNetLoss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = build_model("usnet", 1, resolve_args("usnet", args)).to(device).train()
    anchors = network.anchors(crop, crop, device=device)
    loss_fn = USNetLoss(alpha=alpha, beta=beta)
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    mean = torch.tensor(IMAGENET_NORMALISATION["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_NORMALISATION["std"], device=device).view(1, 3, 1, 1)
    for step in range(steps):
        crops = [_crop(samples[int(rng.integers(len(samples)))], crop, rng) for _ in range(batch_size)]
        x = torch.as_tensor(np.stack([c[0] for c in crops]), device=device).permute(0, 3, 1, 2).float() / 255
        labels = torch.as_tensor(np.stack([c[1] for c in crops]).astype(np.int64), device=device)
        optimiser.zero_grad()
        loss = loss_fn(network((x - mean) / std), labels, anchors)["loss"]
        loss.backward()
        optimiser.step()
        schedule.step()
        if on_step:
            on_step(step, float(loss.detach()))
    return network.eval()
