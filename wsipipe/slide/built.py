"""Pyramid levels a slide lacks, built once from its own pixels and cached as zarr arrays.

A slide whose smallest level is far finer than a stage needs (a single-level OME-TIFF at
0.23 µm/px, read at the tumour model's 12 µm/px) cannot be served by resizing each read: one
256 px tile would need a 13 000 px read. ``with_level_for`` builds the missing level once, at
exactly the µm/px asked for: each built pixel is the area-weighted mean of the smallest level's
pixels under it (what ``cv2.INTER_AREA`` gives when resizing the whole level), computed block by
block (about ``BLOCK`` source px a side), so memory does not grow with the slide. The level
is stored in a cache folder the caller names (``segment``: OUTDIR/.wsipipe-levels), written
atomically, and served by ``BuiltLevelsReader`` like a native level (level-0 coordinates, white
beyond the edge). Any later reader given that folder (``open_slide(..., levels_cache=)``: a
rerun, a reader process) uses it as it is.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from wsipipe.errors import SlideOpenError
from wsipipe.files import atomic_path, folder_lock, make_output_folder
from wsipipe.slide.base import MAX_EXTRA_DOWNSAMPLE, Level, SlideReader

#: The cache folder's name inside a stage's output folder.
LEVELS_FOLDER = ".wsipipe-levels"
#: Source pixels read at once (a side; one built pixel's span where that is more): one block, as
#: float32, is the build's working memory.
BLOCK = 1024
#: Chunk side of a built level's zarr array.
CHUNK = 512
#: The attribute a built level's array records what it was built from under.
ATTRIBUTE = "wsipipe_built_level"
#: Bytes hashed at each end of the slide file for its fingerprint.
FINGERPRINT_BYTES = 1 << 20


def needs_level(reader: SlideReader, mpp: float) -> bool:
    """Whether ``mpp`` is coarser than resizing a read of the smallest level may go."""
    return mpp > reader.level_mpp(len(reader.levels) - 1) * MAX_EXTRA_DOWNSAMPLE


def slide_fingerprint(reader: SlideReader) -> str:
    """Names the slide's pixels cheaply: the file's size, its first and last MiB and its levels
    (a replaced slide gets a level of its own; a moved or renamed one keeps its level)."""
    digest = hashlib.sha256()
    size = reader.path.stat().st_size
    with open(reader.path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        handle.seek(max(0, size - FINGERPRINT_BYTES))
        digest.update(handle.read(FINGERPRINT_BYTES))
    digest.update(repr((size, [(lvl.width, lvl.height, lvl.downsample) for lvl in reader.levels])).encode())
    return digest.hexdigest()[:16]


def with_level_for(
    reader: SlideReader, mpp: float, cache: str | Path, say: Callable[[str], None] | None = None
) -> SlideReader:
    """``reader`` itself when its levels serve ``mpp``; otherwise a reader with the level
    ``mpp`` needs, built into ``cache`` unless a complete one is there already.

    Refuses (``InvalidInputError``) what no level can serve (``check_mpp`` with ``buildable``).
    """
    reader.check_mpp(mpp, buildable=True)
    if not needs_level(reader, mpp):
        return reader
    native = reader.native if isinstance(reader, BuiltLevelsReader) else reader
    cache = Path(cache)
    fingerprint = slide_fingerprint(native)
    downsample = mpp / native.mpp
    path = cache / f"{fingerprint}-{downsample:.6g}.zarr"
    if not path.exists():
        make_output_folder(cache)
        # The lock serialises builders of one cache and clears the temporaries a killed build left.
        with folder_lock(cache, busy="another wsipipe run is building a level of this slide here"):
            if not path.exists():
                if say is not None:
                    say(f"{native.path.name}: no pyramid level near {mpp:g} µm/px; building one into {cache} (once)")
                build_level(native, downsample, path, fingerprint)
    return attach_built_levels(native, cache, fingerprint)


def build_level(reader: SlideReader, downsample: float, path: Path, fingerprint: str) -> None:
    """Write ``reader``'s smallest level area-averaged to ``downsample`` level-0 px per pixel to
    the zarr array ``path``, through a temporary name: a killed build leaves no level behind."""
    import zarr

    source = len(reader.levels) - 1
    lvl = reader.levels[source]
    factor = downsample / lvl.downsample  # source pixels per built pixel
    width, height = math.ceil(lvl.width / factor), math.ceil(lvl.height / factor)
    step = max(1, math.floor(BLOCK / factor))  # built pixels per block side
    record = {
        "fingerprint": fingerprint,
        "source_level": source,
        "downsample": downsample,
        "width": width,
        "height": height,
    }
    with atomic_path(path) as temporary:
        array = zarr.create_array(
            str(temporary),
            shape=(height, width, 3),
            chunks=(CHUNK, CHUNK, 3),
            dtype=np.uint8,
            attributes={ATTRIBUTE: record},
        )
        for y0 in range(0, height, CHUNK):
            for x0 in range(0, width, CHUNK):
                h, w = min(CHUNK, height - y0), min(CHUNK, width - x0)
                chunk = np.empty((h, w, 3), np.uint8)
                for by in range(y0, y0 + h, step):
                    rows, top = _area_weights(by, min(by + step, y0 + h), factor)
                    for bx in range(x0, x0 + w, step):
                        cols, left = _area_weights(bx, min(bx + step, x0 + w), factor)
                        location = (round(left * lvl.downsample), round(top * lvl.downsample))
                        block = reader.read_region(location, source, (cols.shape[1], rows.shape[1]))
                        # Two plain matrix products (BLAS): source rows into built rows, then columns.
                        mean = rows @ block.reshape(len(block), -1).astype(np.float32)  # (rows, source cols * 3)
                        mean = mean.reshape(len(rows), -1, 3).transpose(1, 0, 2).reshape(cols.shape[1], -1)
                        mean = (cols @ mean).reshape(len(cols), len(rows), 3).transpose(1, 0, 2)
                        chunk[by - y0 : by - y0 + len(rows), bx - x0 : bx - x0 + len(cols)] = np.rint(mean).clip(0, 255)
                array[y0 : y0 + h, x0 : x0 + w] = chunk


def _area_weights(start: int, stop: int, factor: float) -> tuple[np.ndarray, int]:
    """(weights, first): built pixels ``start:stop`` as weights (n, m) over the source pixels
    ``first:first + m`` they cover, each row the fractions of its pixel's span (``factor``
    source pixels) that each source pixel fills."""
    first, last = math.floor(start * factor), math.ceil(stop * factor)
    edges = np.arange(first, last + 1, dtype=np.float64)
    spans = np.arange(start, stop + 1, dtype=np.float64) * factor
    low = np.maximum(edges[None, :-1], spans[:-1, None])
    high = np.minimum(edges[None, 1:], spans[1:, None])
    return (np.clip(high - low, 0, None) / factor).astype(np.float32), first


def attach_built_levels(reader: SlideReader, cache: str | os.PathLike, fingerprint: str | None = None) -> SlideReader:
    """``reader`` with every level built for its slide in ``cache`` (itself when there is none)."""
    import zarr

    cache = Path(cache)
    if not cache.is_dir():
        return reader
    fingerprint = fingerprint or slide_fingerprint(reader)
    built = []
    for path in sorted(cache.glob(f"{fingerprint}-*.zarr")):
        try:
            array = zarr.open_array(str(path), mode="r")
            record = dict(array.attrs[ATTRIBUTE])
        except Exception as exc:  # zarr raises many types for a damaged store
            raise SlideOpenError(f"{path}: a damaged built level; delete it ({exc})") from None
        if record["fingerprint"] != fingerprint or array.shape != (record["height"], record["width"], 3):
            raise SlideOpenError(f"{path}: a built level of another slide; delete it")
        built.append((Level(int(record["width"]), int(record["height"]), float(record["downsample"])), array))
    if not built:
        return reader
    return BuiltLevelsReader(reader, sorted(built, key=lambda item: item[0].downsample), cache)


class BuiltLevelsReader(SlideReader):
    """A slide's own levels followed by the levels built for it (zarr arrays, coarser than any
    of its own), each read like a native level."""

    def __init__(self, native: SlideReader, built: list[tuple[Level, object]], levels_cache: Path):
        super().__init__(native.path, native._mpp_override)
        self.native = native
        #: The folder the built levels are in (for opening the slide again with them).
        self.levels_cache = levels_cache
        self.backend = native.backend
        self.thread_safe = native.thread_safe
        self._built = [array for _, array in built]
        self._levels = native.levels + [lvl for lvl, _ in built]

    @property
    def vendor(self) -> str | None:
        return self.native.vendor

    @property
    def levels(self) -> list[Level]:
        return self._levels

    @property
    def _metadata_mpp(self):
        return self.native._metadata_mpp

    @property
    def objective_power(self) -> float | None:
        return self.native.objective_power

    @property
    def associated_images(self) -> list[str]:
        return self.native.associated_images

    def read_region(self, location, level, size, out=None) -> np.ndarray:
        if level < len(self.native.levels):
            return self.native.read_region(location, level, size, out)
        return super().read_region(location, level, size, out)

    def _read_raw(self, x, y, level, width, height) -> np.ndarray:
        """White beyond the level; ``x, y`` snap to the nearest built pixel (a built level's
        downsample is fractional: segment's tile corners are whole built pixels, rounded)."""
        array = self._built[level - len(self.native.levels)]
        downsample = self._levels[level].downsample
        left, top = round(x / downsample), round(y / downsample)
        out = np.full((height, width, 3), 255, np.uint8)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + width, array.shape[1]), min(top + height, array.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]
        return out

    def close(self) -> None:
        self.native.close()
