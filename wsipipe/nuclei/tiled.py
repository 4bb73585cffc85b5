"""Nuclei of a large image or slide, segmented tile by tile with overlap, none counted twice.

The image is cut into square cores; each core is segmented with a margin of context around it.
A nucleus is kept only by the tile whose core contains its centroid, and it is kept whole (its
pixels in the margin too), so a nucleus cut by a core border is neither lost nor duplicated.
Kept nuclei are painted into the output label map where it is still background and given ids
1..n that are unique across the image. Per-nucleus measurements are taken on the tile where the
nucleus was kept, so the whole label map never has to be in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

#: Context around each core, in µm: wider than the largest nucleus so none is cut.
DEFAULT_MARGIN_UM = 24.0


@dataclass(frozen=True)
class Nucleus:
    """One nucleus, in the working image's pixels (x right, y down)."""

    id: int
    centroid_x: float
    centroid_y: float
    area_px: int
    perimeter_px: float
    eccentricity: float
    mean_haematoxylin_od: float
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    contour: np.ndarray  # (k, 2) x, y outline of the object, in working pixels


@dataclass(frozen=True)
class TileDone:
    """One processed core: its box and window (y0, x0, y1, x1), the window's RGB, its new nuclei."""

    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int] | None  # None (and rgb None) when the core was skipped
    rgb: np.ndarray | None
    nuclei: list[Nucleus]


def core_tiles(height: int, width: int, core: int) -> Iterator[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) of the cores covering the image in raster order."""
    for y0 in range(0, height, core):
        for x0 in range(0, width, core):
            yield y0, x0, min(y0 + core, height), min(x0 + core, width)


def segment_tiled(
    read: Callable[[int, int, int, int], np.ndarray],
    shape: tuple[int, int],
    segment: Callable[[np.ndarray], np.ndarray],
    haematoxylin: Callable[[np.ndarray], np.ndarray],
    out,
    core: int = 1024,
    margin: int = 48,
    on_tile: Callable[[TileDone], None] | None = None,
    skip: Callable[[int, int, int, int], bool] | None = None,
) -> list[Nucleus]:
    """Segment ``shape`` = (H, W) pixels read by ``read(y0, x0, y1, x1) -> RGB`` into ``out``.

    ``segment(rgb) -> labels`` segments one window; ``haematoxylin(rgb) -> OD`` gives the
    per-pixel haematoxylin for the measurements. ``out`` is an (H, W) integer array (numpy or
    zarr) of zeros that receives the labels. ``skip(y0, x0, y1, x1)`` may leave out cores
    (no tissue); ``on_tile`` hears of every core when done. Returns the nuclei in id order.
    """
    height, width = shape
    nuclei: list[Nucleus] = []
    for cy0, cx0, cy1, cx1 in core_tiles(height, width, core):
        core_box = (cy0, cx0, cy1, cx1)
        if skip is not None and skip(*core_box):
            if on_tile:
                on_tile(TileDone(core_box, None, None, []))
            continue
        wy0, wx0 = max(0, cy0 - margin), max(0, cx0 - margin)
        wy1, wx1 = min(height, cy1 + margin), min(width, cx1 + margin)
        rgb = read(wy0, wx0, wy1, wx1)
        labels = segment(rgb)
        window = np.asarray(out[wy0:wy1, wx0:wx1])
        kept = _keep_centred(labels, (cy0 - wy0, cx0 - wx0, cy1 - wy0, cx1 - wx0))
        first = len(nuclei)
        if kept:
            from scipy import ndimage

            h_od = haematoxylin(rgb)
            boxes = ndimage.find_objects(labels)
            for local_id in kept:
                nucleus = _measure(labels, local_id, boxes[local_id - 1], len(nuclei) + 1, h_od, wx0, wy0, window)
                if nucleus is not None:
                    nuclei.append(nucleus)
            out[wy0:wy1, wx0:wx1] = window
        if on_tile:
            on_tile(TileDone(core_box, (wy0, wx0, wy1, wx1), rgb, nuclei[first:]))
    return nuclei


def _keep_centred(labels: np.ndarray, core: tuple[int, int, int, int]) -> list[int]:
    """Ids whose centroid (mean pixel position) lies in the core [y0, y1) x [x0, x1)."""
    from scipy import ndimage

    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return []
    centres = np.asarray(ndimage.center_of_mass(np.ones_like(labels), labels, ids)).reshape(-1, 2)
    y0, x0, y1, x1 = core
    # pixel centres are at integer coordinates: pixel k spans [k - 0.5, k + 0.5)
    inside = (centres[:, 0] >= y0 - 0.5) & (centres[:, 0] < y1 - 0.5)
    inside &= (centres[:, 1] >= x0 - 0.5) & (centres[:, 1] < x1 - 0.5)
    return [int(i) for i in ids[inside]]


def _measure(labels, local_id, box, new_id, h_od, x_offset, y_offset, window) -> Nucleus | None:
    """Paint one kept nucleus (inside ``box``, its slices) into ``window`` where still background, and measure it."""
    import cv2

    ys, xs = np.nonzero(labels[box] == local_id)
    ys += box[0].start
    xs += box[1].start
    free = window[ys, xs] == 0
    ys, xs = ys[free], xs[free]
    if ys.size == 0:
        return None
    window[ys, xs] = new_id
    y0, x0 = int(ys.min()), int(xs.min())
    mask = np.zeros((int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1), dtype=np.uint8)
    mask[ys - y0, xs - x0] = 1
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=len)
    perimeter = float(cv2.arcLength(outline, True)) if len(outline) > 1 else 0.0
    contour = cv2.approxPolyDP(outline, 0.5, True).reshape(-1, 2).astype(np.float64)
    contour += (x0 + x_offset, y0 + y_offset)
    return Nucleus(
        id=new_id,
        centroid_x=float(xs.mean() + x_offset),
        centroid_y=float(ys.mean() + y_offset),
        area_px=int(ys.size),
        perimeter_px=perimeter,
        eccentricity=_eccentricity(xs, ys),
        mean_haematoxylin_od=float(h_od[ys, xs].mean()),
        bbox=(x0 + x_offset, y0 + y_offset, int(xs.max()) + 1 + x_offset, int(ys.max()) + 1 + y_offset),
        contour=contour,
    )


def _eccentricity(xs: np.ndarray, ys: np.ndarray) -> float:
    """Of the ellipse with the same second moments (as skimage's regionprops): 0 circle, 1 line."""
    if xs.size < 2:
        return 0.0
    small, large = np.linalg.eigvalsh(np.cov(np.stack([xs, ys]).astype(np.float64), bias=True))
    return float(np.sqrt(1 - small / large)) if large > 0 else 0.0


def segment_image_tiled(rgb: np.ndarray, segment, haematoxylin, core: int = 1024, margin: int = 48):
    """``segment_tiled`` over an in-memory RGB image; returns (labels, nuclei)."""
    out = np.zeros(rgb.shape[:2], dtype=np.int32)
    nuclei = segment_tiled(
        lambda y0, x0, y1, x1: rgb[y0:y1, x0:x1], rgb.shape[:2], segment, haematoxylin, out, core, margin
    )
    return out, nuclei
