"""Nuclei of a large image or slide, segmented tile by tile with overlap, none counted twice.

The image is cut into square cores; each core is segmented with a margin of context around it.
A nucleus is kept only by the tile whose core contains its centroid, and it is kept whole (its
pixels in the margin too), so a nucleus cut by a core border is neither lost nor duplicated.
Kept nuclei are painted into the output label map where it is still background and given ids
1..n that are unique across the image; a nucleus left with fewer pixels than the method's minimum
(another tile's nucleus already took the rest) is dropped, so none is smaller than the minimum the
segmentation promised. Per-nucleus measurements are taken on the tile where the nucleus was kept,
so the whole label map never has to be in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from wsipipe.processes import may_start_helpers

#: Context around each core, in µm: wider than the largest nucleus so none is cut, and wide enough
#: that US-Net's output in the core does not see the window's edge (at 24 µm 1.4 % of a CPM-15
#: image's nuclei changed between whole and tiled; at 32 µm none).
DEFAULT_MARGIN_UM = 32.0


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
    """One processed core: its box and window (y0, x0, y1, x1), the window's RGB, its new nuclei,
    and which pixels of the window they were painted on (a kept nucleus may reach into a
    neighbouring core: figures per core count its pixels there)."""

    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int] | None  # None (and rgb, painted None) when the core was skipped
    rgb: np.ndarray | None
    nuclei: list[Nucleus]
    painted: np.ndarray | None  # bool, the window's shape


def core_tiles(height: int, width: int, core: int) -> Iterator[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) of the cores covering the image in raster order."""
    for y0 in range(0, height, core):
        for x0 in range(0, width, core):
            yield y0, x0, min(y0 + core, height), min(x0 + core, width)


def plan_windows(
    shape: tuple[int, int], core: int, margin: int, skip: Callable[[int, int, int, int], bool] | None = None
) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int] | None]]:
    """(core, window) of every core in raster order: the window (y0, x0, y1, x1) is the core with
    ``margin`` around it, clipped to the image; None for a core ``skip(*core)`` leaves out."""
    height, width = shape
    plan: list[tuple[tuple[int, int, int, int], tuple[int, int, int, int] | None]] = []
    for cy0, cx0, cy1, cx1 in core_tiles(height, width, core):
        if skip is not None and skip(cy0, cx0, cy1, cx1):
            plan.append(((cy0, cx0, cy1, cx1), None))
        else:
            window = (max(0, cy0 - margin), max(0, cx0 - margin), min(height, cy1 + margin), min(width, cx1 + margin))
            plan.append(((cy0, cx0, cy1, cx1), window))
    return plan


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
    min_pixels: float = 0,
) -> list[Nucleus]:
    """Segment ``shape`` = (H, W) pixels read by ``read(y0, x0, y1, x1) -> RGB`` into ``out``.

    ``segment(rgb) -> labels`` segments one window; ``haematoxylin(rgb) -> OD`` gives the
    per-pixel haematoxylin for the measurements. ``out`` is an (H, W) integer array (numpy or
    zarr) of zeros that receives the labels. ``skip(y0, x0, y1, x1)`` may leave out cores
    (no tissue); ``on_tile`` hears of every core when done. A nucleus with fewer than
    ``min_pixels`` pixels left to paint is dropped. Returns the nuclei in id order.

    One window at a time, in this process; ``WindowPainter`` is the same with a worker pool.
    """
    plan = plan_windows(shape, core, margin, skip)
    painter = WindowPainter(
        plan, lambda values: segment(values["rgb"]), haematoxylin, out, on_tile=on_tile, min_pixels=min_pixels
    )
    for _, window in plan:
        if window is not None:
            painter.add({"rgb": read(*window)}, window[1], window[0])
    return painter.finish()


class WindowPainter:
    """The nuclei merger of the inference engine (``add(values, x, y)`` / ``finish()``): each
    window's outputs become its instances (``label(values) -> labels``, in ``pool`` when given, so
    the watershed runs while the network works on the next windows), and the instances are painted
    into ``out`` strictly in raster order, so the ids and every figure are those one window at a
    time gives. ``values`` holds the window's ``rgb`` and whatever ``label`` needs; (x, y) is the
    window's top-left corner. ``plan``: ``plan_windows``'s; windows arrive in its order.

    At most ``depth`` windows wait in the pool; ``add`` then waits for the oldest.
    """

    def __init__(
        self,
        plan,
        label: Callable[[dict], np.ndarray],
        haematoxylin: Callable[[np.ndarray], np.ndarray],
        out,
        *,
        on_tile: Callable[[TileDone], None] | None = None,
        min_pixels: float = 0,
        pool=None,
        depth: int = 4,
    ):
        self.plan, self.label, self.haematoxylin, self.out = plan, label, haematoxylin, out
        self.on_tile, self.min_pixels, self.pool, self.depth = on_tile, min_pixels, pool, depth
        self.index_at = {(window[1], window[0]): index for index, (_, window) in enumerate(plan) if window is not None}
        self.painted_to = 0  # plan entries before this one are done
        self.pending: deque = deque()  # (plan index, rgb, future of (labels, kept ids, haematoxylin))
        self.nuclei: list[Nucleus] = []

    def add(self, values: dict, x: int, y: int) -> None:
        index = self.index_at[(x, y)]
        core, window = self.plan[index]
        inner = (core[0] - window[0], core[1] - window[1], core[2] - window[0], core[3] - window[1])
        job = (_window_instances, self.label, self.haematoxylin, values, inner)
        future = self.pool.submit(*job) if self.pool is not None else _Done(job[0](*job[1:]))
        self.pending.append((index, values["rgb"], future))
        while self.pending and (len(self.pending) > self.depth or self.pending[0][2].done()):
            self._paint(*self.pending.popleft())

    def finish(self) -> list[Nucleus]:
        """Paint what is left; the nuclei in id order."""
        while self.pending:
            self._paint(*self.pending.popleft())
        self._skipped_until(len(self.plan))
        return self.nuclei

    def _skipped_until(self, index: int) -> None:
        for core, window in self.plan[self.painted_to : index]:
            if window is not None:
                raise RuntimeError(f"window {window} was not segmented")  # the source missed one: a bug
            if self.on_tile:
                self.on_tile(TileDone(core, None, None, [], None))
        self.painted_to = max(self.painted_to, index)

    def _paint(self, index: int, rgb: np.ndarray, future) -> None:
        self._skipped_until(index)
        labels, kept, h_od = future.result()
        core, (wy0, wx0, wy1, wx1) = self.plan[index]
        window = np.asarray(self.out[wy0:wy1, wx0:wx1])
        first = len(self.nuclei)
        if kept.size:
            self.nuclei += _paint_and_measure(labels, kept, h_od, window, first + 1, wx0, wy0, self.min_pixels)
        if len(self.nuclei) > first:
            self.out[wy0:wy1, wx0:wx1] = window
        if self.on_tile:
            painted = window > first  # ids of earlier tiles are at most ``first``
            self.on_tile(TileDone(core, (wy0, wx0, wy1, wx1), rgb, self.nuclei[first:], painted))
        self.painted_to = index + 1


class _Done:
    """A finished future, for the work done where it was asked for (no pool)."""

    def __init__(self, value):
        self.value = value

    def done(self) -> bool:
        return True

    def result(self):
        return self.value


def _window_instances(label, haematoxylin, values: dict, inner: tuple[int, int, int, int]):
    """What a window's painting needs, computed away from the painting: its instance labels, the
    ids centred in its core ``inner`` (window pixels) and its per-pixel haematoxylin."""
    labels = label(values)
    kept = _keep_centred(labels, inner)
    return labels, kept, haematoxylin(values["rgb"]) if kept.size else None


def start_workers(count: int):
    """A pool of ``count`` processes for ``WindowPainter`` (None for 0): spawned (the parent runs
    torch's thread pools), one thread each, ignoring Ctrl-C and dying with the parent."""
    if count == 0 or not may_start_helpers():  # a daemonic batch worker may start no processes
        return None
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from wsipipe.processes import helpers_ignore_ctrl_c

    pool = ProcessPoolExecutor(
        max_workers=count,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(os.getpid(),),
    )
    with helpers_ignore_ctrl_c():
        for _ in range(count):
            pool.submit(int)  # start every process now, while the model loads
    return pool


def _start_worker(parent_pid: int) -> None:
    from wsipipe.processes import die_with_parent

    die_with_parent(parent_pid)
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _keep_centred(labels: np.ndarray, core: tuple[int, int, int, int]) -> np.ndarray:
    """Ids whose centroid (mean pixel position) lies in the core [y0, y1) x [x0, x1), ascending."""
    ys, xs = np.nonzero(labels)
    if ys.size == 0:
        return ys
    which = labels[ys, xs]
    area = np.bincount(which)
    ids = np.flatnonzero(area[1:]) + 1
    centre_y = np.bincount(which, weights=ys)[ids] / area[ids]  # integer sums: exact, as center_of_mass
    centre_x = np.bincount(which, weights=xs)[ids] / area[ids]
    y0, x0, y1, x1 = core
    # pixel centres are at integer coordinates: pixel k spans [k - 0.5, k + 0.5)
    inside = (centre_y >= y0 - 0.5) & (centre_y < y1 - 0.5) & (centre_x >= x0 - 0.5) & (centre_x < x1 - 0.5)
    return ids[inside]


def _paint_and_measure(labels, kept, h_od, window, first_id, x_offset, y_offset, min_pixels) -> list[Nucleus]:
    """Paint the kept nuclei into ``window`` where it is still background, ids from ``first_id`` in
    ``kept`` order (a nucleus with fewer than ``min_pixels`` free pixels, or none, is dropped), and
    measure what was painted.

    Kept nuclei never overlap one another, so all can be painted at once; the per-pixel sums come
    from one ``bincount`` each instead of one pass per nucleus.
    """
    import cv2
    from scipy import ndimage

    order = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    order[kept] = np.arange(1, kept.size + 1)
    painted = np.where(window == 0, order[labels], 0)  # kept-order index of each free kept pixel
    area = np.bincount(painted.ravel(), minlength=kept.size + 1)
    too_small = (area < max(min_pixels, 1)) & (area > 0)
    too_small[0] = False
    if too_small.any():
        painted[too_small[painted]] = 0
        area[too_small] = 0
    ys, xs = np.nonzero(painted)
    which = painted[ys, xs]
    present = np.flatnonzero(area[1:]) + 1
    new_ids = np.zeros(kept.size + 1, dtype=np.int64)
    new_ids[present] = np.arange(first_id, first_id + present.size)
    window[ys, xs] = new_ids[which]
    n = np.maximum(area, 1)
    mean_x, mean_y = np.bincount(which, xs, kept.size + 1) / n, np.bincount(which, ys, kept.size + 1) / n
    dx, dy = xs - mean_x[which], ys - mean_y[which]
    cxx, cyy = np.bincount(which, dx * dx, kept.size + 1) / n, np.bincount(which, dy * dy, kept.size + 1) / n
    cxy = np.bincount(which, dx * dy, kept.size + 1) / n
    eccentricity = _eccentricity(cxx, cyy, cxy, area)
    mean_h = np.bincount(which, h_od[ys, xs], kept.size + 1) / n  # float64 sums of the float32 OD
    boxes = ndimage.find_objects(painted)
    # plain Python numbers for the loop: indexing numpy arrays one element at a time is slow
    ids, centre_x, centre_y = new_ids.tolist(), (mean_x + x_offset).tolist(), (mean_y + y_offset).tolist()
    areas, eccentricities, mean_ods = area.tolist(), eccentricity.tolist(), mean_h.tolist()
    nuclei = []
    for index in present.tolist():
        box = boxes[index - 1]
        mask = (painted[box] == index).view(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        outline = max(contours, key=len)
        y0, x0 = box[0].start + y_offset, box[1].start + x_offset
        contour = cv2.approxPolyDP(outline, 0.5, True).reshape(-1, 2).astype(np.float64) + (x0, y0)
        nuclei.append(
            Nucleus(
                id=ids[index],
                centroid_x=centre_x[index],
                centroid_y=centre_y[index],
                area_px=areas[index],
                perimeter_px=float(cv2.arcLength(outline, True)) if len(outline) > 1 else 0.0,
                eccentricity=eccentricities[index],
                mean_haematoxylin_od=mean_ods[index],
                bbox=(x0, y0, box[1].stop + x_offset, box[0].stop + y_offset),
                contour=contour,
            )
        )
    return nuclei


def _eccentricity(cxx: np.ndarray, cyy: np.ndarray, cxy: np.ndarray, area: np.ndarray) -> np.ndarray:
    """Of the ellipses with these second moments (as skimage's regionprops): 0 circle, 1 line; 0 for one pixel."""
    half_sum, root = (cxx + cyy) / 2, np.sqrt(((cxx - cyy) / 2) ** 2 + cxy**2)
    small, large = half_sum - root, half_sum + root
    ratio = np.divide(small, large, out=np.ones_like(large), where=large > 0)
    return np.where(area >= 2, np.sqrt(np.clip(1 - ratio, 0, None)), 0.0)


def segment_image_tiled(
    rgb: np.ndarray, segment, haematoxylin, core: int = 1024, margin: int = 48, min_pixels: float = 0
):
    """``segment_tiled`` over an in-memory RGB image; returns (labels, nuclei)."""
    out = np.zeros(rgb.shape[:2], dtype=np.int32)
    nuclei = segment_tiled(
        lambda y0, x0, y1, x1: rgb[y0:y1, x0:x1],
        rgb.shape[:2],
        segment,
        haematoxylin,
        out,
        core,
        margin,
        min_pixels=min_pixels,
    )
    return out, nuclei
