"""The nuclei stage's input read as windows, and a US-Net run over them through the inference engine.

A window is a core tile with its margin, (y0, x0, y1, x1) in working pixels, clipped to the input.
Windows of one shape that follow each other in raster order travel as one batch (positions, uint8
NHWC tiles), the shape the engine's sources give: slices of an image held in memory, or a slide's
regions read by the engine's reader processes (``wsipipe.inference.engine.start_readers``), a few
batches ahead of the network. Each window is read exactly as one read alone would read it (one
``read_at_mpp`` of its own box), so batching changes no pixel.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsipipe.inference import engine

if TYPE_CHECKING:
    from wsipipe.stain.base import StainNormalizer, StainParams

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 in working pixels
Batch = tuple[list[tuple[int, int]], np.ndarray]  # the engine's: (x, y) corners, (n, h, w, 3) uint8


@dataclass
class WindowedInput:
    """The input at the working µm/px: its size, how to reach its pixels, and a thumbnail.

    ``image``: the whole input at the working µm/px (plain images, read whole); else ``slide``
    (path, backend, mpp override) is read at ``mpp`` through ``reader`` here, and through reader
    processes for the windows.
    """

    name: str
    shape: tuple[int, int]  # working pixels (H, W)
    scale: float  # level-0 pixels per working pixel
    thumbnail: np.ndarray  # RGB at about THUMBNAIL_MPP
    level0_shape: tuple[int, int]  # (H, W) of the input itself
    mpp: float
    image: np.ndarray | None = None
    reader: object | None = None  # an open slide (``wsipipe.slide``)
    slide: tuple[str, str | None, float | None] | None = None  # path, backend, mpp override

    def read(self, box: Box) -> np.ndarray:
        """One window, read in this process."""
        if self.image is not None:
            y0, x0, y1, x1 = box
            return self.image[y0:y1, x0:x1]
        return read_window(self.reader, box, self.scale, self.mpp)

    def batches(
        self,
        windows: list[Box],
        batch_size: int,
        prepare: Callable | None = None,
        readers: int = 0,
        ahead: int = engine.READ_AHEAD,
    ) -> Iterator[Batch]:
        """``windows`` in order, as batches of up to ``batch_size`` windows of one shape.

        ``prepare(tiles) -> tiles`` runs on each batch where it is read (in the reader processes
        for a slide with ``readers``; a normalised view's mapping, say). A slide with ``readers``
        > 0 is read by that many processes, ``ahead`` batches before the consumer.
        """
        groups = same_shape_runs(windows, batch_size)
        if self.image is not None:
            for group in groups:
                yield _corners(group), _prepared([self.read(box) for box in group], prepare)
            return
        pool = None
        if readers > 0 and len(groups) > 1 and self.slide is not None:  # a path reader processes can open
            path, backend, mpp_override = self.slide
            pool = engine.start_readers(path, mpp_override, min(readers, len(groups)), backend=backend)
        if pool is None:  # read here: no readers wanted, or none may start (a daemonic batch worker)
            for group in groups:
                yield _corners(group), read_windows(self.reader, group, self.scale, self.mpp, prepare)
            return
        try:
            pending: deque = deque()
            queue = iter(groups)
            for group in queue:
                pending.append(
                    (group, engine.submit_to_reader(pool, read_windows, group, self.scale, self.mpp, prepare))
                )
                if len(pending) >= ahead:
                    break
            while pending:
                group, future = pending.popleft()
                tiles = future.result()
                following = next(queue, None)
                if following is not None:
                    pending.append(
                        (
                            following,
                            engine.submit_to_reader(pool, read_windows, following, self.scale, self.mpp, prepare),
                        )
                    )
                yield _corners(group), tiles
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def read_window(reader, box: Box, scale: float, mpp: float) -> np.ndarray:
    """The window ``box`` of a slide at ``mpp`` (``scale`` level-0 pixels per working pixel)."""
    y0, x0, y1, x1 = box
    return reader.read_at_mpp((x0 * scale, y0 * scale), (x1 - x0, y1 - y0), mpp)


def read_windows(reader, boxes: list[Box], scale: float, mpp: float, prepare: Callable | None = None) -> np.ndarray:
    """Windows of one shape of a slide, stacked (n, h, w, 3), then ``prepare``d."""
    return _prepared([read_window(reader, box, scale, mpp) for box in boxes], prepare)


def _prepared(windows: list[np.ndarray], prepare: Callable | None) -> np.ndarray:
    tiles = np.stack(windows)
    return tiles if prepare is None else prepare(tiles)


def _corners(group: list[Box]) -> list[tuple[int, int]]:
    return [(x0, y0) for y0, x0, _, _ in group]


def same_shape_runs(windows: list[Box], batch_size: int) -> list[list[Box]]:
    """``windows`` cut, in order, into runs of up to ``batch_size`` windows of one shape."""
    runs: list[list[Box]] = []
    for box in windows:
        shape = (box[2] - box[0], box[3] - box[1])
        last = runs[-1] if runs else None
        if last and len(last) < batch_size and (last[0][2] - last[0][0], last[0][3] - last[0][1]) == shape:
            last.append(box)
        else:
            runs.append([box])
    return runs


def open_windowed(
    path: Path,
    mpp_override: float | None,
    backend: str | None,
    mpp: float,
    as_image: bool,
    default_image_mpp: float,
    thumbnail_mpp: float,
) -> WindowedInput:
    """The input as seen at ``mpp`` µm/px: with ``as_image`` an image read whole (at
    ``default_image_mpp`` without ``mpp_override``), else a slide."""
    if as_image:
        return _image_input(path, mpp_override, mpp, default_image_mpp, thumbnail_mpp)
    from wsipipe.slide import open_slide

    reader = open_slide(path, backend=backend, mpp_override=mpp_override)
    scale = mpp / reader.mpp
    width, height = reader.dimensions
    shape = (max(1, math.floor(height / scale)), max(1, math.floor(width / scale)))
    return WindowedInput(
        path.name,
        shape,
        scale,
        reader.thumbnail_at_mpp(thumbnail_mpp),
        (height, width),
        mpp,
        reader=reader,
        slide=(str(path), backend, mpp_override),
    )


def _image_input(
    path: Path, mpp_override: float | None, working_mpp: float, default_mpp: float, thumbnail_mpp: float
) -> WindowedInput:
    import logging

    from wsipipe.errors import InvalidInputError
    from wsipipe.nuclei.data import read_rgb, resample

    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    try:
        rgb = read_rgb(path)
    except Exception as exc:
        raise InvalidInputError(f"{path}: not a readable image ({exc})") from None
    mpp = mpp_override
    if mpp is None:
        mpp = default_mpp
        logging.getLogger("wsipipe.nuclei.stage").warning(
            "%s: an image records no µm/px; assuming %s (40x); give it with --mpp-override (mpp_override in Python)",
            path,
            mpp,
        )
    working, _ = resample(rgb, None, mpp, working_mpp)
    thumbnail, _ = resample(rgb, None, mpp, thumbnail_mpp)
    return WindowedInput(
        path.name, working.shape[:2], working_mpp / mpp, thumbnail, rgb.shape[:2], working_mpp, image=working
    )


# --- a US-Net over windows -------------------------------------------------------------------------


@dataclass(frozen=True)
class NormalisedView:
    """``prepare`` for a model with a normalised view: the batch's windows as they are, followed by
    the same windows mapped onto the model's training stain with the input's parameters ``stain``
    (None: each window's own). Picklable, so reader processes can map what they read."""

    normaliser: StainNormalizer
    stain: StainParams | None

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        mapped = [self.normaliser.transform(tile, source=self.stain) for tile in tiles]
        return np.concatenate([tiles, np.stack(mapped).astype(np.uint8, copy=False)])


class UsnetWindows:
    """Window batches in, per window out: ``rgb``, the segmentation and distance (H, W) (the mean
    over the eight views with ``views`` 8), and the detections above ``score_threshold`` (boxes
    (k, 4), scores (k,), in anchor order) from the window as it is.

    Each window is padded once at the bottom and right with white to the network's multiple, so
    every view turns the same canvas and the stride grid sits on the window's top-left corner: a
    window cut from a larger image sees the grid that image does, and tiling changes no nuclei.
    With ``normalised`` the batch holds the windows and then their mapped copies
    (``NormalisedView``): every output is the mean of the two.

    On the CPU the runner takes one window at a time (``batch_size`` 1): oneDNN's convolutions sum
    in another order for a larger batch (about 1e-6), enough to move a watershed border, so a
    batch would not give the nuclei one window gives.
    """

    def __init__(
        self,
        bundle,
        device: str,
        batch_size: int,
        views: int,
        normalised: bool,
        score_threshold: float = 0.0,
        say: Callable[[str], None] = print,
    ):
        from wsipipe.models.usnet import usnet_heads

        self.multiple = 2 ** (len(bundle.model.encoder) - 1)
        self.normalised, self.score_threshold = normalised, score_threshold
        self.runner = engine.Runner(
            bundle,
            device,
            batch_size,
            outputs=usnet_heads(bundle.model),
            views=views,
            averaged=("segmentation", "distance"),
            say=say,
        )

    def __call__(self, tiles: np.ndarray) -> dict:
        count = len(tiles) // 2 if self.normalised else len(tiles)
        height, width = tiles.shape[1:3]
        canvases = np.pad(
            tiles,
            ((0, 0), (0, -height % self.multiple), (0, -width % self.multiple), (0, 0)),
            mode="constant",
            constant_values=255,
        )
        out = self.runner(canvases[:count])
        if self.normalised:
            mapped = self.runner(canvases[count:])
            out = {name: (value + mapped[name]) / 2 for name, value in out.items()}
        keep = out["scores"] > self.score_threshold
        values = {
            "rgb": tiles[:count],
            "boxes": [b[k] for b, k in zip(out["boxes"], keep)],
            "scores": [s[k] for s, k in zip(out["scores"], keep)],
        }
        for name in ("segmentation", "distance"):
            if name in out:
                values[name] = out[name][:, 0, :height, :width]
        return values


def usnet_labels(values: dict, **settings) -> np.ndarray:
    """A window's instance labels from its ``UsnetWindows`` outputs (``usnet_instances``)."""
    from wsipipe.models.usnet import usnet_instances

    return usnet_instances(
        values["segmentation"], values["boxes"], values["scores"], values.get("distance"), **settings
    )


def pixels_only(tiles: np.ndarray) -> dict:
    """The runner of a method without a network (the classical one): each window's pixels."""
    return {"rgb": tiles}
