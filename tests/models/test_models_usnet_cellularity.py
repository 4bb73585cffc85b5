"""US-Net and the cellularity regressor: shapes, anchors, matching, losses, instances (tiny inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsipipe.models import build_model, parameter_count
from wsipipe.models.cellularity import cellularity_loss, load_segmentation_encoder
from wsipipe.models.usnet import (
    MIN_CORE_PIXELS,
    AnchorMatcher,
    USNetLoss,
    centre_distance,
    decode,
    encode,
    instance_boxes,
    usnet_instances,
)

TINY = {"base": 4, "depth": 3, "anchor_sizes": [[16, 24], [8, 12], [4, 6]]}


def _discs():
    labels = np.zeros((2, 32, 32), dtype=np.int64)
    yy, xx = np.mgrid[:32, :32]
    labels[0][(yy - 8) ** 2 + (xx - 8) ** 2 < 16] = 1
    labels[0][(yy - 20) ** 2 + (xx - 22) ** 2 < 25] = 2
    labels[1][(yy - 16) ** 2 + (xx - 10) ** 2 < 9] = 7
    return torch.as_tensor(labels)


def test_usnet_shapes_and_anchors():
    model = build_model("usnet", 1, TINY)
    out = model(torch.rand(2, 3, 32, 32))
    # anchors: 8x8 x 2 + 16x16 x 2 + 32x32 x 2
    n = 2 * (8 * 8 + 16 * 16 + 32 * 32)
    assert out["segmentation"].shape == (2, 1, 32, 32)
    assert out["scores"].shape == (2, n) and out["offsets"].shape == (2, n, 4)
    anchors = model.anchors(32, 32)
    assert anchors.shape == (n, 4)
    assert anchors[0].tolist() == [1.5, 1.5, 16.0, 16.0]  # first cell of the stride-4 map
    assert anchors[-1].tolist() == [31.0, 31.0, 6.0, 6.0]  # last pixel of the stride-1 map
    assert parameter_count("usnet") > 1e6


def test_offsets_round_trip_and_matching():
    anchors = torch.tensor([[10.0, 10.0, 8.0, 8.0], [30.0, 30.0, 8.0, 8.0], [12.0, 10.0, 8.0, 8.0]])
    boxes = torch.tensor([[10.0, 10.0, 8.0, 8.0]])
    assert torch.allclose(decode(encode(boxes.expand(3, 4), anchors), anchors), boxes.expand(3, 4))
    targets = AnchorMatcher(anchors)(boxes)
    # anchor 0 is the box (IoU 1), anchor 1 is far (IoU 0), anchor 2 overlaps 6x8 of 8x8: IoU 48/80 = 0.6
    assert targets.labels.tolist() == [1.0, 0.0, 1.0]
    assert torch.allclose(targets.offsets[0], torch.zeros(4))


def _dense_match(anchors, boxes):
    """The full anchors x boxes IoU matrix: what ``AnchorMatcher`` must reproduce."""
    from torchvision.ops import box_iou

    from wsipipe.models.usnet import NEGATIVE_IOU, POSITIVE_IOU, to_corners

    iou = box_iou(to_corners(anchors), to_corners(boxes))
    best_iou, best_box = iou.max(dim=1)
    labels = torch.full((anchors.shape[0],), -1.0)
    labels[best_iou < NEGATIVE_IOU] = 0
    labels[best_iou >= POSITIVE_IOU] = 1
    best_anchor = iou.argmax(dim=0)
    labels[best_anchor] = 1
    best_box[best_anchor] = torch.arange(boxes.shape[0])
    return labels, encode(boxes[best_box], anchors)


def test_binned_matching_equals_the_full_iou_matrix(cpm15_dir):
    from wsipipe.nuclei.data import load_cpm15

    samples = load_cpm15(cpm15_dir)
    anchors = build_model("usnet", 1, {"base": 4}).anchors(128, 128)
    match = AnchorMatcher(anchors)
    rng = np.random.default_rng(0)
    positives = 0
    for sample in samples[:6]:
        for _ in range(3):
            y, x = (int(rng.integers(0, d - 128)) for d in sample.instances.shape)
            boxes = torch.as_tensor(instance_boxes(sample.instances[y : y + 128, x : x + 128]))
            targets, (labels, offsets) = match(boxes), _dense_match(anchors, boxes)
            assert torch.equal(targets.labels, labels)
            assert torch.equal(targets.offsets, offsets)
            positives += int((labels == 1).sum())
    assert positives > 1000
    outside = torch.tensor([[130.0, 60.0, 20.0, 20.0], [-5.0, -5.0, 12.0, 12.0]])  # cut by the crop's edges
    assert torch.equal(match(outside).labels, _dense_match(anchors, outside)[0])


def test_instance_boxes():
    boxes = instance_boxes(_discs()[0].numpy())
    # disc radius < 2 around (8, 8): pixels 5..11 -> centre 8, 7 wide
    assert boxes[0].tolist() == [8.0, 8.0, 7.0, 7.0]
    assert len(boxes) == 2


def test_usnet_loss_terms_and_gradients():
    torch.manual_seed(0)
    model = build_model("usnet", 1, TINY)
    labels = _discs()
    out = model(torch.rand(2, 3, 32, 32))
    losses = USNetLoss(alpha=1.0, beta=2.0)(out, labels, model.anchors(32, 32))
    assert torch.isclose(losses["loss"], losses["segmentation"] + losses["confidence"] + 2.0 * losses["localisation"])
    assert all(float(v.detach()) > 0 for v in losses.values())
    losses["loss"].backward()
    assert model.segmentation.weight.grad.abs().sum() > 0
    assert model.offsets[2].weight.grad.abs().sum() > 0


def test_segmentation_term_is_l1_and_weights_confidence():
    model = build_model("usnet", 1, TINY)
    labels = _discs()
    anchors = model.anchors(32, 32)
    n = anchors.shape[0]
    perfect = {
        "segmentation": (labels > 0).float()[:, None],
        "scores": torch.zeros(2, n),
        "offsets": torch.zeros(2, n, 4),
    }
    losses = USNetLoss()(perfect, labels, anchors)
    assert float(losses["segmentation"]) == 0.0
    # an all-background segmentation weights every anchor's focal term by 0
    empty = dict(perfect, segmentation=torch.zeros(2, 1, 32, 32))
    losses = USNetLoss()(empty, labels, anchors)
    assert float(losses["confidence"]) == 0.0
    assert float(losses["segmentation"]) == pytest.approx(float((labels > 0).float().mean()))


def test_instances_from_segmentation_seeded_by_detections():
    seg = np.zeros((20, 30))
    seg[5:15, 3:27] = 0.9  # two touching nuclei as one blob
    seg[10, 15] = 0.6  # a saddle between them
    boxes = np.array([[8, 10, 10, 10], [21, 10, 10, 10], [8.5, 10, 10, 10], [50, 50, 4, 4]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95])  # the third is suppressed by NMS, the fourth is outside
    labels = usnet_instances(seg, boxes, scores)
    assert labels.max() == 2
    assert labels[10, 5] != labels[10, 25]
    assert (labels > 0).sum() == 10 * 24
    # no detection: the blob is still one nucleus
    assert usnet_instances(seg, boxes[:0], scores[:0]).max() == 1


def test_centre_distance_peaks_at_each_object_centre_with_a_valley_where_objects_touch():
    labels = np.zeros((2, 7, 11), dtype=np.int64)
    labels[0, 1:6, 1:6] = 1  # 5 x 5: distances 1, 2, 3 from its edge ring to its centre
    labels[0, 1:6, 6:9] = 4  # touches object 1 (id 4: ids need not be 1..n); 5 x 3, its middle column 2
    labels[1, 0:3, 0:11] = 2  # the crop's edge is no edge of the object: its first row is farthest from one
    distance = centre_distance(labels)
    assert distance.dtype == np.float32
    np.testing.assert_allclose(distance[0, 3, :10], [0, 1 / 3, 2 / 3, 1, 2 / 3, 1 / 3, 0.5, 1, 0.5, 0])
    np.testing.assert_allclose(distance[0, 1:6, 7], [0.5, 1, 1, 1, 0.5])
    np.testing.assert_allclose(distance[1, 0:4, 5], [1, 2 / 3, 1 / 3, 0])
    assert distance[0, 0].max() == distance[1, 4:].max() == 0


def test_distance_output_adds_its_squared_error_to_the_segmentation_loss():
    labels = _discs()
    anchors = build_model("usnet", 1, TINY).anchors(32, 32)
    n = anchors.shape[0]
    truth = torch.as_tensor(centre_distance(labels.numpy()))[:, None]
    perfect = {
        "segmentation": (labels > 0).float()[:, None],
        "scores": torch.zeros(2, n),
        "offsets": torch.zeros(2, n, 4),
    }
    assert float(USNetLoss()(dict(perfect, distance=truth), labels, anchors)["segmentation"]) == 0.0
    off = float(USNetLoss()(dict(perfect, distance=truth + 0.25), labels, anchors)["segmentation"])
    assert off == pytest.approx(0.25**2)


def test_distance_separates_touching_nuclei_the_detector_missed():
    seg = np.zeros((20, 30))
    seg[5:15, 3:27] = 0.9  # two touching nuclei as one blob, one detection (on the left one)
    distance = np.zeros_like(seg)
    distance[5:15, 3:27] = centre_distance((np.arange(30) >= 15)[None, 3:27].repeat(10, 0).astype(np.int64) + 1)
    boxes = np.array([[8, 10, 10, 10]], dtype=np.float32)
    scores = np.array([0.9])
    assert usnet_instances(seg, boxes, scores).max() == 1  # without the distance: merged
    assert usnet_instances(seg, boxes, scores, distance).max() == 1  # cores seed nothing unless asked
    labels = usnet_instances(seg, boxes, scores, distance, core=0.5)
    assert labels.max() == 2 and (labels[5:15, 3:15] == 1).all() and (labels[5:15, 15:27] == 2).all()
    assert usnet_instances(seg, boxes, scores, distance, core=1.0).max() == 1  # no core above 1
    small = np.where(distance > 0.5, 0.5, distance)  # the right nucleus's core shrinks below the smallest that seeds
    small[9:11, 20 : 20 + MIN_CORE_PIXELS // 2 - 1] = 0.9
    small[5:15, 3:15] = distance[5:15, 3:15]
    assert usnet_instances(seg, boxes, scores, small, core=0.5).max() == 1
    small[9:11, 20 : 20 + MIN_CORE_PIXELS // 2] = 0.9
    assert usnet_instances(seg, boxes, scores, small, core=0.5).max() == 2  # the bound is inclusive


def test_instances_under_min_pixels_are_dropped():
    seg = np.zeros((20, 30))
    seg[5:15, 3:13] = 0.9  # a nucleus of 100 px
    seg[2:4, 20:22] = 0.9  # a 4 px sliver, seeded by its own detection (the strongest: id 1)
    seg[12:18, 20:26] = 0.9  # a nucleus of 36 px
    boxes = np.array([[20.5, 2.5, 2, 2], [8, 10, 10, 10], [22.5, 14.5, 6, 6]], dtype=np.float32)
    scores = np.array([0.95, 0.9, 0.8])
    assert np.bincount(usnet_instances(seg, boxes, scores).ravel())[1:].tolist() == [4, 100, 36]
    kept = usnet_instances(seg, boxes, scores, min_pixels=5)
    assert np.bincount(kept.ravel())[1:].tolist() == [100, 36]  # renumbered 1..n without a gap
    assert (usnet_instances(seg, boxes, scores, min_pixels=4) > 0).sum() == 140  # the bound is inclusive


def test_compactness_keeps_the_border_of_touching_nuclei_near_their_midline():
    seg = np.zeros((12, 40))
    seg[1:11, 2:38] = 0.99 - 0.001 * np.arange(2, 38)  # two touching nuclei, a slight slope between them
    boxes = np.array([[8, 6, 10, 10], [32, 6, 10, 10]], dtype=np.float32)
    scores = np.array([0.9, 0.8])
    plain = usnet_instances(seg, boxes, scores)
    compact = usnet_instances(seg, boxes, scores, compactness=0.01)
    # plain flooding follows the slope: the higher seed takes everything down to the other seed
    assert (plain == 1).sum() > 2 * (plain == 2).sum()
    assert abs(int((compact == 1).sum()) - int((compact == 2).sum())) <= 20  # within a column of 10 px each way
    assert ((plain > 0) == (compact > 0)).all()


def test_cellularity_net_shapes_loss_and_encoder_initialisation():
    torch.manual_seed(0)
    model = build_model("cellularity", 1, {"seg_encoder": "resnet18", "resnet": "resnet18", "hidden": 16})
    scores = model(torch.rand(2, 3, 64, 64))
    assert scores.shape == (2,) and bool(((scores > 0) & (scores < 1)).all())
    loss = cellularity_loss(scores, torch.tensor([0.2, 0.9]))
    assert float(loss.detach()) == pytest.approx(float((scores.detach() - torch.tensor([0.2, 0.9])).abs().mean()))
    loss.backward()
    assert model.head[-1].weight.grad is not None

    segmentation = build_model("deeplabv3plus", 3, {"encoder": "resnet18"})
    copied = load_segmentation_encoder(model, segmentation.state_dict())
    assert copied > 0
    key = next(iter(model.seg_encoder.state_dict()))
    assert torch.equal(model.seg_encoder.state_dict()[key], segmentation.state_dict()["encoder." + key])
    with pytest.raises(ValueError, match="encoder"):
        load_segmentation_encoder(model, {"decoder.x": torch.zeros(1)})
    wrong = build_model("deeplabv3plus", 3, {"encoder": "resnet34"})
    with pytest.raises(ValueError, match="does not fit"):
        load_segmentation_encoder(model, wrong.state_dict())


def test_usnet_learns_a_real_crop(cpm15_dir):
    """Smoke training: 15 Adam steps on one real CPM-15 crop lower the loss (seconds on CPU)."""
    from wsipipe.nuclei.data import load_cpm15

    sample = load_cpm15(cpm15_dir)[0]
    rgb = torch.as_tensor(sample.rgb[:64, :64]).permute(2, 0, 1)[None].float() / 255
    labels = torch.as_tensor(sample.instances[:64, :64].astype(np.int64))[None]
    torch.manual_seed(0)
    model = build_model("usnet", 1, TINY)
    anchors = model.anchors(64, 64)
    loss_fn = USNetLoss()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(15):
        optimiser.zero_grad()
        loss = loss_fn(model(rgb), labels, anchors)["loss"]
        loss.backward()
        optimiser.step()
        history.append(float(loss.detach()))
    assert history[-1] < 0.7 * history[0], history
