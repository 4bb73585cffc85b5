"""One inference engine for every model wsipipe runs: tile sources, one runner, mergers.

In MONAI's splitter / inferer / merger spirit; ``segment``, ``predict``, ``evaluate``, training's
validation and ``batch`` (through ``segment``) run through it.

API
---
Sources yield ``(positions, tiles)``: a list of (x, y) top-left corners (the merger's pixels) and
uint8 RGB tiles (n, T, T, 3), in order:

- ``slide_batches(coords, positions, tile=, mpp=, batch_size=, reader=, pool=, device=)``: a
  slide, read at level-0 ``coords`` (the ``tiff_tiles`` fast path where it applies) by
  ``start_readers(...)`` processes (``reader_count(device)`` of them), at most ``ahead`` batches
  in flight; with CUDA, JPEG levels are decoded on the GPU (``gpu_jpeg``; tensors there);
- ``store_batches(store, indices, positions, batch_size)``: a ``wsipipe tile`` store's tiles;
- ``ImageTiles(image, tile, overlap, batch_size)``: an in-memory image padded with glass, as a
  slide holding it would be tiled (``.height``/``.width`` of the canvas, ``.crop(canvas)``).

``Runner(bundle, device, batch_size, stain=, outputs=, views=, averaged=, compile=)`` runs a
``ModelBundle``: ``runner(tiles)`` -> float32 numpy (n, C, T, T), or a dict of them when
``outputs`` returns a dict (a US-Net's heads). The bundle's ``preprocess``; stain on the device;
CUDA: pinned memory, non-blocking copies, float16 autocast, channels-last; out-of-memory halves
the batch; ``views=8`` averages the ``averaged`` outputs over the four turns, each mirrored.

Mergers take ``add(values, x, y)`` per tile and ``finish()``: ``Blender`` (in memory; returns the
blended (C, H, W)) and ``wsipipe.inference.stitch.StripStitcher`` (a slide's prediction store).

``run(source, runner, merger, on_batch=)`` feeds one into the other, merging a batch in a thread
while the next one runs, and returns where the time went; ``predict_tiled`` is the whole chain
for one image.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from wsipipe.errors import DeviceError
from wsipipe.inference.sliding import GLASS, blend_window
from wsipipe.processes import may_start_helpers

#: Reader processes with CUDA: JPEG decoding must keep up with a GPU (about 70 tiles/s per process
#: through openslide, several times that through the ``tiff_tiles`` fast path).
MAX_CUDA_READERS = 8
#: Reader processes on the CPU, where the model needs the cores: reading is about a tenth of its time.
CPU_READERS = 2
#: Batches the reader processes decode ahead of the runner (bounded memory): at least this many,
#: and one more than there are processes, so that none of them waits for work.
READ_AHEAD = 4
#: Test-time augmentation views: (quarter turns, mirrored), the identity first.
VIEWS = [(turns, mirror) for turns in range(4) for mirror in (False, True)]


# --- sources ---------------------------------------------------------------------------------------

Batch = tuple[list[tuple[int, int]], np.ndarray]


def reader_count(device: str, cores: int | None = None) -> int:
    """How many reader processes feed a runner on ``device``: up to ``MAX_CUDA_READERS`` with CUDA
    (one core left to the main process), ``CPU_READERS`` on the CPU."""
    cores = cores or len(os.sched_getaffinity(0))
    if str(device).startswith("cuda"):
        return max(1, min(MAX_CUDA_READERS, cores - 1))
    return min(CPU_READERS, cores)


_worker_reader = None


def _open_worker(
    path: str, mpp_override: float | None, levels_cache: str | None, parent_pid: int, backend: str | None = None
) -> None:
    from wsipipe.processes import die_with_parent

    die_with_parent(parent_pid)
    import cv2

    from wsipipe.slide import open_slide

    global _worker_reader
    cv2.setNumThreads(1)
    _worker_reader = open_slide(path, backend=backend, mpp_override=mpp_override, levels_cache=levels_cache)


def read_tiles(reader, coords: np.ndarray, tile: int, mpp: float) -> np.ndarray:
    """(n, tile, tile, 3) uint8 at ``mpp`` from level-0 ``coords``, each decoded in place."""
    batch = np.empty((len(coords), tile, tile, 3), np.uint8)
    for index, (x, y) in enumerate(coords):
        reader.read_at_mpp((int(x), int(y)), (tile, tile), mpp, out=batch[index])
    return batch


def _read_in_worker(coords: np.ndarray, tile: int, mpp: float) -> np.ndarray:
    return read_tiles(_worker_reader, coords, tile, mpp)


def submit_to_reader(pool, function: Callable, *args):
    """``function(slide, *args)`` in one of ``pool``'s reader processes (``start_readers``), on its
    open slide: for reads other than square tiles (the nuclei stage's windows). A future."""
    return pool.submit(_call_with_reader, function, *args)


def _call_with_reader(function: Callable, *args):
    return function(_worker_reader, *args)


class ReaderPool(ProcessPoolExecutor):
    """``start_readers``' processes; ``readers``: how many, which the batches kept in flight follow."""

    def __init__(self, readers: int, **options):
        super().__init__(max_workers=readers, **options)
        self.readers = readers


def start_readers(
    slide_path, mpp_override: float | None, workers: int, levels_cache=None, backend: str | None = None
) -> ReaderPool | None:
    """Reader processes, started early so their start-up overlaps model loading (None for 0 workers),
    each with the levels built for the slide in ``levels_cache`` (``wsipipe.slide.built``).

    Spawned, not forked: the parent runs zarr's I/O thread and torch's thread pools. They ignore
    Ctrl-C (the parent shuts the pool down) and die with the parent, even on ``kill -9``.
    """
    if workers == 0 or not may_start_helpers():  # a daemonic batch worker may start no processes
        return None
    import multiprocessing

    from wsipipe.processes import helpers_ignore_ctrl_c

    pool = ReaderPool(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_open_worker,
        initargs=(
            str(slide_path),
            mpp_override,
            str(levels_cache) if levels_cache is not None else None,
            os.getpid(),
            backend,
        ),
    )
    with helpers_ignore_ctrl_c():
        for _ in range(workers):
            pool.submit(int)  # start every process now
    return pool


def slide_batches(
    coords: np.ndarray,
    positions: list,
    *,
    tile: int,
    mpp: float,
    batch_size: int,
    reader=None,
    pool: ReaderPool | None = None,
    ahead: int | None = None,
    device: str = "cpu",
) -> Iterator[Batch]:
    """A slide's tiles at level-0 ``coords``, ``positions`` being where each goes in the merger.

    With CUDA and a JPEG level ``gpu_jpeg`` serves, ``reader`` only slices compressed bytes and
    the tiles are decoded on the device (tensors there). Otherwise with ``pool``
    (``start_readers``) the reader processes keep up to ``ahead`` batches (default: ``READ_AHEAD``,
    or one more than the processes) decoded ahead of the consumer; without, ``reader`` reads in
    this process.
    """
    if str(device).startswith("cuda") and reader is not None:
        from wsipipe.inference.gpu_jpeg import JpegLevelTiles, gpu_slide_batches

        on_device = JpegLevelTiles.open(reader, mpp, tile, device, coords)
        if on_device is not None:
            yield from gpu_slide_batches(on_device, coords, positions, batch_size)
            return
    starts = range(0, len(coords), batch_size)
    if pool is None:
        for start in starts:
            yield (
                positions[start : start + batch_size],
                read_tiles(reader, coords[start : start + batch_size], tile, mpp),
            )
        return
    ahead = ahead or max(READ_AHEAD, pool.readers + 1)
    pending: deque = deque()

    def submit(start: int) -> None:
        pending.append((start, pool.submit(_read_in_worker, coords[start : start + batch_size], tile, mpp)))

    queue = iter(starts)
    for start in queue:
        submit(start)
        if len(pending) >= ahead:
            break
    try:
        while pending:
            start, future = pending.popleft()
            tiles = future.result()
            following = next(queue, None)
            if following is not None:
                submit(following)
            yield positions[start : start + len(tiles)], tiles
    finally:
        for _, future in pending:
            future.cancel()


def store_batches(store, indices: np.ndarray, positions: list, batch_size: int) -> Iterator[Batch]:
    """The tiles ``indices`` of a ``wsipipe tile`` store's ``tiles`` array, ``positions`` being
    where each goes in the merger."""
    for start in range(0, len(indices), batch_size):
        chosen = indices[start : start + batch_size]
        yield positions[start : start + len(chosen)], np.asarray(store.tiles.get_orthogonal_selection((chosen,)))


class ImageTiles:
    """An RGB image's tiles where ``wsipipe segment`` puts them on a slide holding it
    (``wsipipe.grid.grid_coords``: from half an overlap before its corner to half an overlap past
    its far edges), white beyond the image as beyond a slide's edge.

    Positions are in the padded canvas (``height`` x ``width``); ``crop`` cuts a merged canvas
    back to the image.
    """

    def __init__(self, image: np.ndarray, tile: int, overlap: int, batch_size: int):
        from wsipipe.grid import grid_coords

        self.image_height, self.image_width = image.shape[:2]
        coords = grid_coords((self.image_width, self.image_height), tile, overlap, 1.0)
        self.left, self.top = -int(coords[:, 0].min()), -int(coords[:, 1].min())
        right = int(coords[:, 0].max()) + tile - self.image_width
        bottom = int(coords[:, 1].max()) + tile - self.image_height
        self.padded = np.pad(image, ((self.top, bottom), (self.left, right), (0, 0)), constant_values=GLASS)
        self.height, self.width = self.padded.shape[:2]
        self.positions = [(int(x) + self.left, int(y) + self.top) for x, y in coords]
        self.tile, self.batch_size = tile, batch_size

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self) -> Iterator[Batch]:
        tile = self.tile
        for start in range(0, len(self.positions), self.batch_size):
            chosen = self.positions[start : start + self.batch_size]
            yield chosen, np.stack([self.padded[y : y + tile, x : x + tile] for x, y in chosen])

    def crop(self, canvas: np.ndarray) -> np.ndarray:
        """The image's own pixels of a (C, height, width) canvas."""
        return canvas[:, self.top : self.top + self.image_height, self.left : self.left + self.image_width]


# --- the runner ------------------------------------------------------------------------------------


def softmax(logits):
    """A segmentation model's class probabilities: the default ``outputs`` of a ``Runner``."""
    import torch

    return torch.softmax(logits.float(), dim=1)


class Runner:
    """uint8 RGB tile batches (N, T, T, 3) in, the model's outputs per tile out (float32 numpy).

    Everything after decoding happens on the device: the stain normaliser (a callable on uint8
    NHWC batches on the device), the bundle's ``preprocess``, the forward pass and ``outputs``
    (network output -> a (N, C, T, T) tensor or a dict of them; default ``softmax``). On CUDA the
    batch is staged through pinned memory and copied without blocking, runs under float16 autocast
    in channels-last layout, and an out-of-memory error halves the batch size and retries.

    ``views=8``: test-time augmentation; the outputs named in ``averaged`` (all of a tensor output
    when None) are the mean over the tile's four quarter turns, each also mirrored, turned back;
    the others come from the tile as it is. ``compile``: ``torch.compile`` the network (opt-in:
    minutes of compiling pay off on long CUDA runs only).
    """

    def __init__(
        self,
        bundle,
        device: str,
        batch_size: int,
        *,
        stain: Callable | None = None,
        outputs: Callable = softmax,
        views: int = 1,
        averaged: tuple[str, ...] | None = None,
        compile: bool = False,
        say: Callable[[str], None] = print,
    ):
        import torch

        if views not in (1, len(VIEWS)):
            raise ValueError(f"views must be 1 or {len(VIEWS)}, not {views}")
        self.bundle = bundle
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.batch_size = batch_size
        self.stain, self.outputs, self.views, self.averaged, self.say = stain, outputs, views, averaged, say
        model = bundle.model.to(self.device).eval()
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
        self.network = torch.compile(model) if compile else model
        self._pinned = None

    def _to_device(self, tiles):
        import torch

        if isinstance(tiles, torch.Tensor):  # decoded on the device (``gpu_jpeg``)
            return tiles.to(self.device)
        host = torch.from_numpy(np.ascontiguousarray(tiles))
        if not self.cuda:
            return host
        if self._pinned is None or self._pinned.shape[0] < len(tiles) or self._pinned.shape[1:] != host.shape[1:]:
            self._pinned = torch.empty(host.shape, dtype=torch.uint8).pin_memory()
        staged = self._pinned[: len(tiles)]
        staged.copy_(host)
        return staged.to(self.device, non_blocking=True)

    def _predict(self, x, names: tuple[str, ...] | None = None):
        """``outputs`` of the network on ``x``; ``names``: only these heads of a dict-returning
        network, when it returns them all under those names (the extra views need only the averaged
        ones, so the others are not decoded); an ``outputs`` that derives them gets every head."""
        import torch

        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.cuda):
            raw = self.network(x)
        if names is not None and isinstance(raw, dict) and raw.keys() >= set(names):
            raw = {name: raw[name] for name in names}
        return self.outputs(raw)

    def _dense(self, out) -> dict:
        """The outputs test-time augmentation averages, by name (None: a tensor output), in float32."""
        if not isinstance(out, dict):
            return {None: out.float()}
        return {name: out[name].float() for name in (self.averaged or ()) if name in out}

    def forward(self, tiles: np.ndarray):
        """One batch through the device, without out-of-memory handling."""
        import torch

        with torch.inference_mode():
            pixels = self._to_device(tiles)
            if self.stain is not None:
                pixels = self.stain(pixels)
            x = self.bundle.preprocess(pixels)
            out = self._predict(x)
            if self.views > 1:
                sums = self._dense(out)
                for turns, mirror in VIEWS[1:]:
                    view = torch.rot90(x.flip(-1) if mirror else x, turns, dims=(-2, -1))
                    dense = self._dense(self._predict(view, self.averaged))
                    if dense.keys() != sums.keys():
                        raise ValueError(f"a turned view gave the heads {sorted(dense)}, not {sorted(sums)}")
                    for name, value in dense.items():
                        back = torch.rot90(value, -turns, dims=(-2, -1))
                        sums[name] = sums[name] + (back.flip(-1) if mirror else back)
                averaged = {name: total / len(VIEWS) for name, total in sums.items()}
                out = {**out, **averaged} if isinstance(out, dict) else averaged[None]
            if isinstance(out, dict):
                return {name: value.float().cpu().numpy() for name, value in out.items()}
            return out.float().cpu().numpy()

    def __call__(self, tiles: np.ndarray):
        import torch

        out = []
        start = 0
        while start < len(tiles):
            count = min(self.batch_size, len(tiles) - start)
            try:
                out.append(self.forward(tiles[start : start + count]))
                start += count
            except torch.cuda.OutOfMemoryError:
                if count == 1:
                    raise DeviceError(
                        "CUDA out of memory with a batch of one tile; use {device} cpu", parameter="device"
                    ) from None
                torch.cuda.empty_cache()
                self.batch_size = max(1, count // 2)
                self.say(f"CUDA out of memory: batch size halved to {self.batch_size}")
        if len(out) == 1:
            return out[0]
        if isinstance(out[0], dict):
            return {name: np.concatenate([part[name] for part in out]) for name in out[0]}
        return np.concatenate(out)


def per_tile(values, index: int):
    """Tile ``index`` of a runner's output (an array, or a dict of arrays)."""
    if isinstance(values, dict):
        return {name: value[index] for name, value in values.items()}
    return values[index]


# --- mergers ---------------------------------------------------------------------------------------


class Blender:
    """Weighted accumulation of per-tile outputs into a (channels, height, width) canvas, each
    tile weighted by ``blend_window`` (as the slide ``Stitcher`` weights them)."""

    def __init__(self, channels: int, height: int, width: int, tile: int, overlap: int):
        self.sums = np.zeros((channels, height, width), dtype=np.float32)
        self.weights = np.zeros((height, width), dtype=np.float32)
        self.window = blend_window(tile, overlap)

    def add(self, values: np.ndarray, x: int, y: int) -> None:
        """``values``: (channels, h, w) for the tile whose top-left corner is (x, y)."""
        h, w = values.shape[-2:]
        window = self.window[:h, :w]
        self.sums[:, y : y + h, x : x + w] += values * window
        self.weights[y : y + h, x : x + w] += window

    def finish(self) -> np.ndarray:
        return self.sums / np.maximum(self.weights, np.finfo(np.float32).tiny)


# --- feeding ---------------------------------------------------------------------------------------


def run(source, runner, merger, on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
    """Every batch of ``source`` through ``runner`` into ``merger.add`` (tile by tile, in order);
    a merging thread adds each batch while the next one runs. Does not call ``finish``.

    Returns the seconds spent waiting for tiles (``read_wait``), running (``model``) and merging
    (``merge``, in the thread). ``on_batch(n)`` after each batch of n tiles (a progress bar).
    """
    from concurrent.futures import ThreadPoolExecutor

    spent = {"read_wait": 0.0, "model": 0.0, "merge": 0.0}

    def merge(positions, values) -> None:
        t0 = time.perf_counter()
        for index, (x, y) in enumerate(positions):
            merger.add(per_tile(values, index), x, y)
        spent["merge"] += time.perf_counter() - t0

    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge") as merging:
        t0 = time.perf_counter()
        try:
            for positions, tiles in source:
                t1 = time.perf_counter()
                values = runner(tiles)
                spent["read_wait"] += t1 - t0
                spent["model"] += time.perf_counter() - t1
                pending.append(merging.submit(merge, positions, values))
                while len(pending) > 2 or (pending and pending[0].done()):
                    pending.popleft().result()  # re-raises a merging error here
                if on_batch is not None:
                    on_batch(len(tiles))
                t0 = time.perf_counter()
            while pending:
                pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
    return spent


def predict_tiled(
    bundle, image: np.ndarray, overlap: int, batch_size: int = 8, device: str = "cpu", **runner_options
) -> np.ndarray:
    """The bundle's outputs (channels, h, w) for an RGB image at the model's own scale, tiled and
    blended as ``wsipipe segment`` does a slide holding it, so the result is what segment gives."""
    tile = bundle.tile_size
    tiles = ImageTiles(image, tile, overlap, batch_size)
    runner = Runner(bundle, device, batch_size, **runner_options)
    blender = Blender(len(bundle.classes), tiles.height, tiles.width, tile, overlap)
    run(tiles, runner, blender)
    return tiles.crop(blender.finish())
