"""US-Net (Xu et al. 2019): one U-Net with a nuclei segmentation branch and an anchor detection branch.

* Backbone: a U-Net (widths ``base * 2**i``); the segmentation branch is a 1x1 convolution and a
  sigmoid on the last decoder map.
* Detection branch (SSD/RetinaNet style): on each of the last three decoder maps (strides 4, 2
  and 1) a 3x3 convolution gives, per anchor, a confidence logit and four box offsets. Anchors
  are squares of ``anchor_sizes`` (one pair of sizes per map, coarse to fine).
* Loss (``USNetLoss``): ``L = L_seg + alpha * L_conf + beta * L_loc``. ``L_seg`` is the L1 distance
  between the segmentation output and the nuclei mask (eq. 2). ``L_conf`` is the focal loss of
  every anchor's confidence, each anchor's term weighted by the segmentation output at its
  centre (eqs. 3-4, as we read them: the segmentation steers detection towards nuclear regions;
  the weight is not back-propagated), summed and divided by the positive anchors. ``L_loc`` is the
  smooth L1 loss of the positive anchors' SSD-encoded offsets (eqs. 5-6).
* Instances (``usnet_instances``): a watershed of the segmentation, seeded by the centres of the
  detections that survive non-maximum suppression.
* Our addition, ``distance=True``: a second 1x1 convolution and sigmoid predicts each nucleus's
  normalised distance from its edge (``centre_distance``), trained with the squared error (added
  to ``L_seg``; an L1 error's median flattened the peaks into a plateau). The watershed then
  floods a surface with valleys between touching nuclei and seeds the cores the detector missed:
  merged nuclei are the paper's network's main error on our data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Anchor matching: positive at IoU >= this (and each object's best anchor), negative below NEGATIVE_IOU.
POSITIVE_IOU = 0.5
NEGATIVE_IOU = 0.4


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class USNet(nn.Module):
    """Input sides must be multiples of ``2**depth``."""

    def __init__(
        self,
        in_channels: int = 3,
        base: int = 32,
        depth: int = 4,
        anchor_sizes: tuple = ((24, 34), (12, 17), (6, 8.5)),
        distance: bool = False,
    ):
        super().__init__()
        if depth < 3:
            raise ValueError("US-Net needs depth >= 3 (three decoder maps carry anchors)")
        if len(anchor_sizes) != 3:
            raise ValueError("anchor_sizes: one tuple of sizes for each of the last three decoder maps")
        widths = [base * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList([_block(in_channels, widths[0])])
        self.encoder.extend(_block(widths[i - 1], widths[i]) for i in range(1, depth + 1))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2) for i in range(depth, 0, -1))
        self.decoder = nn.ModuleList(_block(2 * widths[i - 1], widths[i - 1]) for i in range(depth, 0, -1))
        self.segmentation = nn.Conv2d(widths[0], 1, 1)
        self.distance = nn.Conv2d(widths[0], 1, 1) if distance else None
        self.anchor_sizes = tuple(tuple(float(s) for s in sizes) for sizes in anchor_sizes)
        self.strides = (4, 2, 1)
        detection_widths = widths[2::-1]  # decoder maps at strides 4, 2, 1
        confidence = [nn.Conv2d(w, len(s), 3, padding=1) for w, s in zip(detection_widths, self.anchor_sizes)]
        self.confidence = nn.ModuleList(confidence)
        self.offsets = nn.ModuleList(
            nn.Conv2d(w, 4 * len(s), 3, padding=1) for w, s in zip(detection_widths, self.anchor_sizes)
        )
        prior = 0.01  # RetinaNet's initial foreground probability keeps early focal loss stable
        for conv in confidence:
            assert conv.bias is not None  # Conv2d's default bias=True
            nn.init.constant_(conv.bias, -float(np.log((1 - prior) / prior)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        skips = []
        for index, block in enumerate(self.encoder):
            x = block(x if index == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        decoded = []
        for up, block in zip(self.up, self.decoder):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
            decoded.append(x)
        maps = decoded[-3:]
        scores, offsets = [], []
        for feature, conf, off, sizes in zip(maps, self.confidence, self.offsets, self.anchor_sizes):
            b, _, h, w = feature.shape
            scores.append(conf(feature).permute(0, 2, 3, 1).reshape(b, -1))
            offsets.append(off(feature).permute(0, 2, 3, 1).reshape(b, h * w * len(sizes), 4))
        output = {
            "segmentation": torch.sigmoid(self.segmentation(decoded[-1])),
            "scores": torch.cat(scores, dim=1),
            "offsets": torch.cat(offsets, dim=1),
        }
        if self.distance is not None:
            output["distance"] = torch.sigmoid(self.distance(decoded[-1]))
        return output

    def anchors(self, height: int, width: int, device=None) -> torch.Tensor:
        """(N, 4) anchors as (cx, cy, w, h) in input pixels, in the order of ``scores``."""
        result = []
        for stride, sizes in zip(self.strides, self.anchor_sizes):
            ys, xs = torch.meshgrid(
                torch.arange(height // stride, device=device),
                torch.arange(width // stride, device=device),
                indexing="ij",
            )
            centres = torch.stack([xs, ys], dim=-1).reshape(-1, 1, 2).float() * stride + (stride - 1) / 2
            side = torch.tensor(sizes, device=device).reshape(1, -1, 1).expand(centres.shape[0], -1, 2)
            result.append(torch.cat([centres.expand(-1, len(sizes), 2), side], dim=-1).reshape(-1, 4))
        return torch.cat(result)


def to_corners(boxes: torch.Tensor) -> torch.Tensor:
    cxcy, wh = boxes[..., :2], boxes[..., 2:]
    return torch.cat([cxcy - wh / 2, cxcy + wh / 2], dim=-1)


def encode(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """SSD offsets of (cx, cy, w, h) boxes relative to their anchors."""
    return torch.cat(
        [(boxes[..., :2] - anchors[..., :2]) / anchors[..., 2:], torch.log(boxes[..., 2:] / anchors[..., 2:])], dim=-1
    )


def decode(offsets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    return torch.cat(
        [anchors[..., :2] + offsets[..., :2] * anchors[..., 2:], anchors[..., 2:] * torch.exp(offsets[..., 2:])], dim=-1
    )


def usnet_heads(network: USNet):
    """A ``wsipipe.inference.engine.Runner``'s ``outputs`` for ``network``: its raw batch output ->
    segmentation and distance (N, 1, H, W), each anchor's decoded box (N, A, 4) and score (N, A),
    float32. Boxes and scores are decoded one tile at a time, as one tile alone would be: a batch
    gives each tile the numbers it gets by itself."""

    def heads(raw: dict) -> dict:
        out = {name: raw[name].float() for name in ("segmentation", "distance") if name in raw}
        if "offsets" not in raw:  # the runner asked for the dense heads only
            return out
        height, width = raw["segmentation"].shape[-2:]
        anchors = _cached_anchors(network, height, width, raw["segmentation"].device)
        offsets, scores = raw["offsets"].float(), raw["scores"].float()
        out["boxes"] = torch.stack([decode(offsets[index], anchors) for index in range(len(offsets))])
        out["scores"] = torch.stack([torch.sigmoid(scores[index]) for index in range(len(scores))])
        return out

    return heads


def _cached_anchors(network: USNet, height: int, width: int, device) -> torch.Tensor:
    """``network.anchors`` for a canvas size, made once (every window of a slide shares a few sizes)."""
    cache = network.__dict__.setdefault("_anchor_cache", {})
    key = (height, width, str(device))
    if key not in cache:
        cache[key] = network.anchors(height, width, device=device)
    return cache[key]


def instance_boxes(labels: np.ndarray) -> np.ndarray:
    """(n, 4) (cx, cy, w, h) boxes of the objects of a label map (pixel extents)."""
    from scipy import ndimage

    boxes = []
    for found in ndimage.find_objects(labels):
        if found is not None:
            ys, xs = found
            boxes.append(
                [(xs.start + xs.stop - 1) / 2, (ys.start + ys.stop - 1) / 2, xs.stop - xs.start, ys.stop - ys.start]
            )
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


@dataclass(frozen=True)
class AnchorTargets:
    labels: torch.Tensor  # (N,) 1 positive, 0 negative, -1 ignored
    offsets: torch.Tensor  # (N, 4) encoded target of each anchor's matched box


class AnchorMatcher:
    """RetinaNet matching against a fixed set of (cx, cy, w, h) anchors: IoU >= 0.5 positive (plus
    each box's best anchor), < 0.4 negative, in between ignored.

    Only an anchor and a box that overlap have a nonzero IoU: the anchor's centre then lies within
    half the anchor's size of the box. So the anchors of each size are binned once by centre on a
    grid of ``cell`` px, and each box is scored against the anchors of the cells near it. The
    targets are those of the full anchors x boxes IoU matrix (same IoU arithmetic, ties to the
    lowest index as ``max``/``argmax`` break them) at a small part of its cost: with 43,008
    anchors per 128 px crop the full matrix was the largest part of a CPU training step.
    """

    def __init__(self, anchors: torch.Tensor, cell: int = 8):
        self.anchors, self.cell = anchors, cell
        self.corners = to_corners(anchors)
        centre_cells = torch.floor(anchors[:, :2] / cell).long()
        self.origin = centre_cells.min(dim=0).values  # (x, y) of the grid's first cell
        self.shape = centre_cells.max(dim=0).values - self.origin + 1  # (columns, rows)
        sizes, size_of = torch.unique(anchors[:, 2:], dim=0, return_inverse=True)
        self.bins = []  # per anchor size: (half size, anchor indices grouped by cell, cell starts)
        for index, size in enumerate(sizes):
            members = torch.nonzero(size_of == index).flatten()
            cells = centre_cells[members] - self.origin
            keys = cells[:, 1] * self.shape[0] + cells[:, 0]
            counts = torch.bincount(keys, minlength=int(self.shape[0] * self.shape[1]))
            self.bins.append(
                (
                    size / 2,
                    members[torch.argsort(keys, stable=True)],
                    torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]),
                )
            )

    def _near(self, box_corners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(anchor, box) index pairs of every anchor whose centre lies in a cell near a box; each
        pair once, and every overlapping pair among them."""
        anchor_parts, box_parts = [], []
        limit = self.shape - 1
        for half, members, starts in self.bins:
            first = (
                (torch.floor((box_corners[:, :2] - half) / self.cell).long() - self.origin).clamp(min=0).minimum(limit)
            )
            last = (
                (torch.floor((box_corners[:, 2:] + half) / self.cell).long() - self.origin).clamp(min=0).minimum(limit)
            )
            span = last - first + 1
            cells_per_box = span[:, 0] * span[:, 1]
            box = torch.repeat_interleave(torch.arange(len(box_corners), device=box_corners.device), cells_per_box)
            rank = _rank_within(cells_per_box)
            x = first[box, 0] + rank % span[box, 0]
            y = first[box, 1] + rank // span[box, 0]
            keys = y * self.shape[0] + x
            counts = starts[keys + 1] - starts[keys]
            anchor_parts.append(members[torch.repeat_interleave(starts[keys], counts) + _rank_within(counts)])
            box_parts.append(torch.repeat_interleave(box, counts))
        return torch.cat(anchor_parts), torch.cat(box_parts)

    def __call__(self, boxes: torch.Tensor) -> AnchorTargets:
        anchors = self.anchors
        n, m = anchors.shape[0], boxes.shape[0]
        if m == 0:
            return AnchorTargets(torch.zeros(n, device=anchors.device), torch.zeros(n, 4, device=anchors.device))
        box_corners = to_corners(boxes)
        a, b = self._near(box_corners)
        iou = _pair_iou(self.corners[a], box_corners[b])
        best_iou = torch.zeros(n, device=anchors.device).scatter_reduce(0, a, iou, "amax")
        best_box = _lowest_at_max(a, b, iou, best_iou, n)
        box_best = torch.zeros(m, device=anchors.device).scatter_reduce(0, b, iou, "amax")
        best_anchor = _lowest_at_max(b, a, iou, box_best, m)
        labels = torch.full((n,), -1.0, device=anchors.device)
        labels[best_iou < NEGATIVE_IOU] = 0
        labels[best_iou >= POSITIVE_IOU] = 1
        labels[best_anchor] = 1
        best_box[best_anchor] = torch.arange(m, device=anchors.device)
        return AnchorTargets(labels, encode(boxes[best_box], anchors))


def _rank_within(counts: torch.Tensor) -> torch.Tensor:
    """0..count-1 for each group of ``counts``, concatenated: the position of each expanded item in its group."""
    return torch.arange(int(counts.sum()), device=counts.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )


def _pair_iou(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """IoU of corner boxes pair by pair, in ``torchvision.ops.box_iou``'s arithmetic."""
    area1 = (first[:, 2] - first[:, 0]) * (first[:, 3] - first[:, 1])
    area2 = (second[:, 2] - second[:, 0]) * (second[:, 3] - second[:, 1])
    wh = (torch.minimum(first[:, 2:], second[:, 2:]) - torch.maximum(first[:, :2], second[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (area1 + area2 - inter)


def _lowest_at_max(group: torch.Tensor, member: torch.Tensor, value: torch.Tensor, best: torch.Tensor, size: int):
    """Per group, the lowest member whose value is the group's ``best`` (0 where the best is 0:
    ``argmax`` of an all-zero row)."""
    at_max = (value == best[group]) & (value > 0)
    lowest = torch.full((size,), torch.iinfo(torch.long).max, device=value.device)
    lowest = lowest.scatter_reduce(0, group[at_max], member[at_max], "amin")
    return torch.where(lowest == torch.iinfo(torch.long).max, torch.zeros_like(lowest), lowest)


class USNetLoss(nn.Module):
    """``L_seg + alpha * L_conf + beta * L_loc`` (see the module docstring)."""

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, gamma: float = 2.0, focal_alpha: float = 0.25):
        super().__init__()
        self.alpha, self.beta, self.gamma, self.focal_alpha = alpha, beta, gamma, focal_alpha
        self.matcher: AnchorMatcher | None = None
        self.matched: torch.Tensor | None = None  # the anchors ``matcher`` was built for

    def forward(self, output: dict, instances: torch.Tensor, anchors: torch.Tensor) -> dict[str, torch.Tensor]:
        """``instances``: (B, H, W) integer label maps; returns the total and its three terms.

        The anchor targets depend on the labels alone, so they are built on the CPU (where the
        matcher's binning is cheap) and copied to the anchors' device: a GPU step runs no matching
        kernels."""
        segmentation = output["segmentation"][:, 0]
        labels_cpu = instances.cpu().numpy()  # one copy for the distance and the anchor targets
        seg_loss = (segmentation - (instances > 0).float()).abs().mean()
        if "distance" in output:
            target = torch.as_tensor(centre_distance(labels_cpu), device=segmentation.device)
            seg_loss = seg_loss + ((output["distance"][:, 0] - target) ** 2).mean()
        conf_terms, loc_terms, positives = [], [], 0
        centres = anchors[:, :2].round().long()
        height, width = segmentation.shape[-2:]
        centres[:, 0].clamp_(0, width - 1)
        centres[:, 1].clamp_(0, height - 1)
        if self.matcher is None or self.matched is not anchors:
            self.matcher, self.matched = AnchorMatcher(anchors.cpu()), anchors
        for b in range(instances.shape[0]):
            targets = self.matcher(torch.as_tensor(instance_boxes(labels_cpu[b])))
            positives += int((targets.labels == 1).sum())
            labels, offsets = targets.labels.to(anchors.device), targets.offsets.to(anchors.device)
            valid = labels >= 0
            weight = segmentation[b].detach()[centres[:, 1], centres[:, 0]]
            focal = torchvision_focal(output["scores"][b], labels.clamp(min=0), self.focal_alpha, self.gamma)
            conf_terms.append((focal * weight)[valid].sum())
            positive = labels == 1
            loc_terms.append(
                F.smooth_l1_loss(output["offsets"][b][positive], offsets[positive], beta=1 / 9, reduction="sum")
            )
        normaliser = max(1, positives)
        conf_loss = torch.stack(conf_terms).sum() / normaliser
        loc_loss = torch.stack(loc_terms).sum() / normaliser
        total = seg_loss + self.alpha * conf_loss + self.beta * loc_loss
        return {"loss": total, "segmentation": seg_loss, "confidence": conf_loss, "localisation": loc_loss}


def centre_distance(instances: np.ndarray) -> np.ndarray:
    """float32 (..., H, W): each object's pixels' Euclidean distance from the nearest pixel outside
    it (background or another object), divided by the object's largest: 1 at its centre, falling to
    its edge, with a valley to 0 between touching nuclei."""
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    result = np.zeros(instances.shape, dtype=np.float32)
    for index in np.ndindex(instances.shape[:-2]):
        labels = instances[index]
        inside = labels > 0
        edges = find_boundaries(labels, connectivity=1, mode="inner")  # object pixels that 4-touch another label
        distance = ndimage.distance_transform_edt(inside & ~edges) + inside  # edge pixels 1
        largest = ndimage.maximum(distance, labels, np.arange(int(labels.max()) + 1))
        largest = np.asarray(largest, dtype=np.float32).reshape(-1)
        largest[0] = 1.0
        result[index] = distance / largest[labels]
    return result


def torchvision_focal(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    from torchvision.ops import sigmoid_focal_loss

    return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")


def usnet_instances(
    segmentation: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    distance: np.ndarray | None = None,
    score_threshold: float = 0.5,
    nms_iou: float = 0.3,
    foreground: float = 0.5,
    min_pixels: int = 0,
    compactness: float = 0.0,
    core: float | None = None,
) -> np.ndarray:
    """Instance labels from one image's segmentation (H, W) and (cx, cy, w, h) detections.

    Detections above ``score_threshold`` that survive non-maximum suppression seed a watershed
    of the inverted segmentation within ``segmentation > foreground``. With a ``distance`` map
    (a model trained with ``distance``) the watershed floods the inverted distance instead, whose
    ridges lie between touching nuclei, and with ``core`` each nuclear core (``distance > core``,
    at least ``MIN_CORE_PIXELS``) that no detection reached gets a seed of its own: most merged
    nuclei are ones the detector missed. A nuclear region still without a seed becomes one instance.
    Instances under ``min_pixels`` are dropped: they are slivers where the segmentation frays or a
    stray seed, not nuclei, and each costs PQ a false positive. The segmentation saturates near 1
    inside nuclei, so between two touching nuclei the watershed's surface is nearly flat and the
    border can drift far from the midline; ``compactness`` (skimage's compact watershed: per pixel
    of distance from the seed) pulls it back.
    """
    from scipy import ndimage
    from torchvision.ops import nms

    from wsipipe.postprocess.instances import drop_small, seeded_watershed

    mask = segmentation > foreground
    height, width = mask.shape
    keep = scores > score_threshold
    boxes_t = torch.as_tensor(boxes[keep], dtype=torch.float32)
    order = nms(to_corners(boxes_t), torch.as_tensor(scores[keep], dtype=torch.float32), nms_iou).numpy()
    centres = np.rint(boxes_t.numpy()[order, :2]).astype(np.int64).reshape(-1, 2)
    x, y = centres[:, 0], centres[:, 1]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    pixels = y[inside] * width + x[inside]
    pixels = pixels[mask.ravel()[pixels]]
    _, first = np.unique(pixels, return_index=True)  # the strongest detection on a pixel seeds it
    seeds = pixels[np.sort(first)]
    surface = -segmentation if distance is None else -distance
    if distance is not None and core is not None:
        cores, _ = ndimage.label(mask & (distance > core))
        seeds = np.concatenate([seeds, _unseeded_middles(cores, seeds, MIN_CORE_PIXELS)])
    components, _ = ndimage.label(mask)
    seeds = np.concatenate([seeds, _unseeded_middles(components, seeds, 1)])
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers.ravel()[seeds] = np.arange(1, len(seeds) + 1, dtype=np.int32)
    labels = seeded_watershed(surface, markers, components, compactness)
    return drop_small(labels, min_pixels) if min_pixels else labels


#: The smallest nuclear core (pixels at the model's µm/px) that seeds an instance of its own.
MIN_CORE_PIXELS = 8


def _unseeded_middles(regions: np.ndarray, seeds: np.ndarray, min_pixels: int) -> np.ndarray:
    """Flat indices of one pixel in each labelled region of at least ``min_pixels`` that holds
    none of ``seeds``: its middle pixel in raster order, regions in label order."""
    flat = regions.ravel()
    unseeded = np.ones(int(flat.max()) + 1, dtype=bool)
    unseeded[0] = False
    unseeded[flat[seeds]] = False
    members = np.flatnonzero(unseeded[flat])  # raster order
    members = members[np.argsort(flat[members], kind="stable")]
    _, starts, sizes = np.unique(flat[members], return_index=True, return_counts=True)
    return members[(starts + sizes // 2)[sizes >= min_pixels]]
