"""``tile_slide``: a slide into a resumable zarr tile store of its tissue tiles (the ``tile`` stage; its
public door, config and result are ``wsipipe.stages.tile``).

The main thread detects tissue, lays out the grid and creates (or resumes) the store; worker
threads, each with its own handle on the slide, read one shard of tiles at a time and write
that shard into the store themselves. Threads, not processes: the heavy steps (JPEG decoding,
resizing, Blosc compression) release the GIL, and threads cost nothing to start or to hand
pixels to. The main thread journals finished shards and keeps at most two shards per worker in
flight, so memory is bounded whatever the slide's size. With annotations, the workers share the
annotations' spatial index (``TileRasteriser``) and burn every tile's label mask at the tile's
own resolution: no slide-sized mask is ever made.
"""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsipipe.errors import MppUnknownError
from wsipipe.files import file_sha256, output_lock
from wsipipe.grid import TileGrid, build_grid
from wsipipe.qc.apply import restrict_tissue, usable_tissue
from wsipipe.slide import open_slide
from wsipipe.slide.base import SlideReader
from wsipipe.slide.built import LEVELS_FOLDER, BuiltLevelsReader, with_level_for
from wsipipe.stages.base import Progress
from wsipipe.stages.tile import TileConfig, TileResult
from wsipipe.store import ShardWriter, StoreWriter, check_output_location, create_tile_store
from wsipipe.tissue import detect_tissue, read_thumbnail, thumbnail_downsample

if TYPE_CHECKING:
    from wsipipe.annotations import TileRasteriser


@dataclass(frozen=True)
class _ReadSpec:
    """How a worker reads one tile: at a level's own scale, or at a µm/px with resizing."""

    tile_size: int
    level: int
    native: bool
    mpp: float | None
    #: Level-0 pixels a tile spans (for its annotation mask).
    extent: float


def tile_slide(config: TileConfig, progress: Progress | None = None) -> TileResult:
    """Tile ``config.slide`` into ``config.output`` (``wsipipe.stages.tile.run``, which says what).

    ``progress(done, total)`` is called in tiles, once before the first shard and after each one.
    """
    try:
        return _tile(config, progress)
    except MppUnknownError as exc:  # this stage can also tile a level at its own scale
        raise MppUnknownError(exc.path, level_option=True) from None


def _tile(config: TileConfig, progress: Progress | None) -> TileResult:
    started = time.perf_counter()
    mpp = None if config.level is not None else config.mpp
    slide_path, store_path, workers = config.slide, config.output, max(1, config.readers)
    reader = open_slide(slide_path, backend=config.backend, mpp_override=config.mpp_override)
    if mpp is not None:
        try:
            # A slide without a level near ``mpp`` gets one, built once beside the store.
            reader = with_level_for(reader, mpp, store_path.parent / LEVELS_FOLDER)
        except BaseException:
            reader.close()
            raise
    readers = _ThreadReaders(reader, config.mpp_override)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsipipe-tile") if workers > 1 else None
    try:
        rasteriser, labels_meta = (None, None)
        if config.annotations is not None:
            rasteriser, labels_meta = _annotation_index(config.annotations, config.label_map, config.strict, reader)
        usable = usable_tissue(reader, config.qc)
        thumb_downsample = thumbnail_downsample(reader)
        thumbnail = read_thumbnail(reader, thumb_downsample)
        thumb_mpp = reader.mpp_x * thumb_downsample if reader.mpp_x is not None else None
        mask, qc_report = restrict_tissue(
            detect_tissue(thumbnail, thumb_mpp), usable, thumb_downsample, (reader.mpp_x, reader.mpp_y)
        )
        grid = build_grid(
            reader,
            tile_size=config.tile_size,
            overlap=config.overlap,
            mpp=mpp,
            level=config.level,
            tissue_mask=mask,
            mask_downsample=thumb_downsample,
        )
        coords, fractions = grid.select(config.tissue_threshold)
        meta = _provenance(
            reader, slide_path, grid, config.tissue_threshold, config.mpp_override, thumb_downsample, thumb_mpp
        )
        meta["qc"] = qc_report
        meta["params"]["qc"] = config.qc  # a store is resumed only with the same QC
        if labels_meta is not None:
            meta["params"]["annotations"] = labels_meta["source"]
            meta["params"]["label_map"] = labels_meta["label_map"]
            meta["labels"] = {"names": labels_meta["names"], "values": labels_meta["values"]}
            meta["annotations"] = labels_meta["source"]
        check_output_location(store_path)
        # One run per store: a second one would resume the same partial store and, once the first
        # renamed it into place, write a stale one beside it.
        with output_lock(store_path, "another wsipipe run is writing this store"):
            writer = create_tile_store(
                store_path,
                coords=coords,
                tissue_fraction=fractions,
                thumbnail=thumbnail,
                tissue_mask=mask,
                tile_size=config.tile_size,
                meta=meta,
                overwrite=config.overwrite,
            )
            if writer.already_complete:
                return TileResult(
                    output=store_path,
                    n_tiles=len(coords),
                    n_written=0,
                    already_complete=True,
                    seconds=time.perf_counter() - started,
                )
            spec = _ReadSpec(config.tile_size, grid.level, grid.native, grid.mpp, config.tile_size * grid.downsample)
            work = _ShardWork(spec, writer.shard_writer(), readers, rasteriser)
            written = _run_shards(writer, coords, work, pool, workers, progress)
            writer.finish()
    finally:
        if pool is not None:
            # After Ctrl-C or a failure: running shards finish, queued ones are dropped.
            pool.shutdown(wait=True, cancel_futures=True)
        readers.close()
    return TileResult(
        output=store_path,
        n_tiles=len(coords),
        n_written=written,
        already_complete=False,
        seconds=time.perf_counter() - started,
    )


def _annotation_index(path: Path, label_map: str | None, strict: bool, reader: SlideReader):
    """The annotations' spatial index (clipped to the slide) and what the store records of them."""
    from wsipipe.annotations import TileRasteriser, parse_label_map, read_annotations

    annotation_set = read_annotations(path, strict=strict)
    annotation_set.clip_to(*reader.dimensions, strict=strict)
    rasteriser = TileRasteriser(
        annotation_set, parse_label_map(label_map) if label_map is not None else None, strict=strict
    )
    stat = path.stat()
    source = {
        "path": str(path.resolve()),
        "size_bytes": stat.st_size,
        "mtime": stat.st_mtime,
        "sha256": file_sha256(path),
        "format": annotation_set.format,
    }
    names, values = list(rasteriser.label_map.names), list(rasteriser.label_map.values)
    return rasteriser, {"source": source, "label_map": str(rasteriser.label_map), "names": names, "values": values}


def _provenance(
    reader: SlideReader,
    slide_path: Path,
    grid: TileGrid,
    threshold: float,
    mpp_override: float | None,
    thumb_downsample: float,
    thumb_mpp: float | None,
) -> dict:
    stat = slide_path.stat()
    resolved = str(slide_path.resolve())
    params = {
        "slide_path": resolved,
        "slide_size_bytes": stat.st_size,
        "slide_mtime": stat.st_mtime,
        "backend": reader.backend,
        "mpp_override": mpp_override,
        "mpp": grid.mpp,
        "level": grid.level,
        "tile_size": grid.tile_size,
        "overlap": grid.overlap,
        "tissue_threshold": threshold,
    }
    return {
        "stage": "tile",
        "slide": {
            "path": resolved,
            "size_bytes": stat.st_size,
            "mtime": stat.st_mtime,
            "width": reader.dimensions[0],
            "height": reader.dimensions[1],
            "vendor": reader.vendor,
            "backend": reader.backend,
            "mpp": reader.mpp_x,
        },
        "mpp": grid.mpp,
        "level": grid.level,
        "downsample": grid.downsample,
        "level_downsample": reader.levels[grid.level].downsample,
        "overlap": grid.overlap,
        "tissue_threshold": threshold,
        "grid_tiles": int(len(grid.coords)),
        "thumbnail_downsample": thumb_downsample,
        "thumbnail_mpp": thumb_mpp,
        "params": params,
    }


def _run_shards(
    writer: StoreWriter,
    coords: np.ndarray,
    work: _ShardWork,
    pool: ThreadPoolExecutor | None,
    workers: int,
    progress: Progress | None,
) -> int:
    """Read and write every pending shard, journalling each once it is on disk."""
    store = writer.building
    pending = writer.pending_shards()
    todo = sum(store.shard_slice(i).stop - store.shard_slice(i).start for i in pending)
    done = store.n_tiles - todo

    def finished(index: int, n_tiles: int) -> None:
        nonlocal done
        writer.record_done(index)
        done += n_tiles
        if progress is not None:
            progress(done, store.n_tiles)

    if progress is not None:
        progress(done, store.n_tiles)
    if pool is None:
        for index in pending:
            finished(index, work(index, coords[store.shard_slice(index)]))
        return todo
    in_flight: dict = {}

    def collect(keep_at_most: int) -> None:
        while len(in_flight) > keep_at_most:
            completed, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in completed:
                finished(in_flight.pop(future), future.result())
                _release_freed_memory()

    try:
        for index in pending:
            collect(2 * workers - 1)
            shard_coords = coords[store.shard_slice(index)]
            in_flight[pool.submit(work, index, shard_coords)] = index
        collect(0)
    except BaseException:
        # Journal the shards that were running and finish, so a rerun skips them too.
        pool.shutdown(wait=True, cancel_futures=True)
        for future, index in in_flight.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                writer.record_done(index)
        raise
    return todo


def _release_freed_memory() -> None:
    """Hand memory freed by finished shards back to the system (glibc keeps it otherwise, and its
    fragmented heaps would grow with the slide's size)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc():
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


class _ThreadReaders:
    """The slide for the worker threads: the planning reader itself when its backend is
    thread-safe (the slide's tile index is then held once), else one reader per thread, opened
    on first use; and one shard buffer per thread."""

    def __init__(self, main: SlideReader, mpp_override: float | None):
        self._main = main
        levels = main.levels_cache if isinstance(main, BuiltLevelsReader) else None
        self._args = (str(main.path), main.backend, mpp_override, levels)
        self._local = threading.local()
        self._opened: list[SlideReader] = [main]
        self._lock = threading.Lock()

    def get(self) -> SlideReader:
        if self._main.thread_safe or threading.current_thread() is threading.main_thread():
            return self._main
        reader = getattr(self._local, "reader", None)
        if reader is None:
            path, backend, mpp_override, levels = self._args
            reader = self._local.reader = open_slide(
                path, backend=backend, mpp_override=mpp_override, levels_cache=levels
            )
            with self._lock:
                self._opened.append(reader)
        return reader

    def buffer(self, shape: tuple) -> np.ndarray:
        """This thread's shard buffer, reused from shard to shard so memory does not churn."""
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.shape != shape:
            buffer = self._local.buffer = np.empty(shape, np.uint8)
        return buffer

    def close(self) -> None:
        with self._lock:
            for reader in self._opened:
                reader.close()
            self._opened.clear()


@dataclass(frozen=True)
class _ShardWork:
    """Reads one shard's tiles (and burns their masks) and writes the shard; returns its tile count."""

    spec: _ReadSpec
    shard_writer: ShardWriter
    readers: _ThreadReaders
    rasteriser: TileRasteriser | None

    def __call__(self, index: int, coords: np.ndarray) -> int:
        spec, reader = self.spec, self.readers.get()
        size = (spec.tile_size, spec.tile_size)
        tiles = self.readers.buffer((self.shard_writer.tiles_per_shard, *size, 3))[: len(coords)]
        for i, (x, y) in enumerate(coords.tolist()):
            if spec.native:
                reader.read_region((x, y), spec.level, size, out=tiles[i])
            else:
                assert spec.mpp is not None  # a tile read at a µm/px has one (grid.build_grid)
                reader.read_at_mpp((x, y), size, spec.mpp, out=tiles[i])
        if self.rasteriser is None:
            return self.shard_writer.write(index, tiles)
        masks = np.stack([self.rasteriser.tile_mask(x, y, spec.extent, spec.tile_size) for x, y in coords.tolist()])
        fractions = np.stack([self.rasteriser.label_fractions(mask) for mask in masks])
        return self.shard_writer.write(index, tiles, masks, fractions)
