"""Deep Zoom tiles of a slide, made on request from our own ``SlideReader`` (every format and
backend we read), plus the tile geometry the overlays share, so an overlay tile covers exactly
the slide tile of the same address.

Geometry is the Deep Zoom convention (as ``openslide.deepzoom``): level ``L`` of ``max_level + 1``
shows the slide at 1 / 2**(max_level - L); tiles are ``tile`` px plus ``overlap`` px on each
inner side.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from wsipipe.errors import InvalidInputError

TILE_SIZE = 254
OVERLAP = 1
JPEG_QUALITY = 85
#: The coarsest slide level is kept in memory when it has at most this many pixels.
COARSEST_MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class TileBox:
    """A tile's place: Deep Zoom level pixels (x0, y0, x1, y1) and level-0 px per tile px."""

    x0: int
    y0: int
    x1: int
    y1: int
    scale: int

    @property
    def size(self) -> tuple[int, int]:
        return self.x1 - self.x0, self.y1 - self.y0


class DeepZoomGrid:
    """Deep Zoom levels and tiles of an image ``width`` x ``height`` (level-0 px)."""

    def __init__(self, width: int, height: int, tile: int = TILE_SIZE, overlap: int = OVERLAP):
        self.width, self.height, self.tile, self.overlap = int(width), int(height), tile, overlap
        self.max_level = max(0, math.ceil(math.log2(max(self.width, self.height, 1))))

    def level_size(self, level: int) -> tuple[int, int]:
        scale = 2 ** (self.max_level - level)
        return math.ceil(self.width / scale), math.ceil(self.height / scale)

    def tile_count(self, level: int) -> tuple[int, int]:
        width, height = self.level_size(level)
        return math.ceil(width / self.tile), math.ceil(height / self.tile)

    def box(self, level: int, col: int, row: int) -> TileBox | None:
        """The tile's box, or None for a level or tile the image does not have."""
        if not 0 <= level <= self.max_level:
            return None
        cols, rows = self.tile_count(level)
        if not (0 <= col < cols and 0 <= row < rows):
            return None
        width, height = self.level_size(level)
        x0 = col * self.tile - (self.overlap if col else 0)
        y0 = row * self.tile - (self.overlap if row else 0)
        x1 = min(width, (col + 1) * self.tile + self.overlap)
        y1 = min(height, (row + 1) * self.tile + self.overlap)
        return TileBox(x0, y0, x1, y1, 2 ** (self.max_level - level))

    def dzi(self, image_format: str) -> str:
        """The .dzi descriptor (fixed text: no entities, nothing external)."""
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{image_format}" '
            f'Overlap="{self.overlap}" TileSize="{self.tile}"><Size Width="{self.width}" Height="{self.height}"/></Image>\n'
        )


class LRUCache:
    """A thread-safe least-recently-used map of bounded total byte size."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._bytes += len(value)
            while self._bytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)


def read_tile(reader, grid: DeepZoomGrid, box: TileBox, coarsest: np.ndarray | None = None) -> np.ndarray:
    """RGB pixels of a Deep Zoom tile: the finest slide level no finer than the tile needs, read
    with ``read_region`` and resized (area) to the tile, as openslide's DeepZoomGenerator does.

    ``coarsest``: the slide's coarsest level, already read whole; the tiles it serves (every
    Deep Zoom level below it) are cut from it instead of each reading it again.
    """
    level = _best_level(reader, box.scale)
    downsample = reader.levels[level].downsample
    lvl = reader.levels[level]
    # Level-0 rectangle of the tile, clipped to the slide (the last tile may overhang it).
    x0, y0 = box.x0 * box.scale, box.y0 * box.scale
    x1, y1 = min(box.x1 * box.scale, grid.width), min(box.y1 * box.scale, grid.height)
    lx, ly = math.floor(x0 / downsample), math.floor(y0 / downsample)
    read_w = max(1, min(math.ceil((x1 - x0) / downsample), lvl.width - lx))
    read_h = max(1, min(math.ceil((y1 - y0) / downsample), lvl.height - ly))
    if coarsest is not None and level == len(reader.levels) - 1:
        pixels = coarsest[ly : ly + read_h, lx : lx + read_w]
    else:
        pixels = reader.read_region((x0, y0), level, (read_w, read_h))
    size = box.size
    if (read_w, read_h) != size:
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return pixels


def _best_level(reader, scale: float) -> int:
    best = 0
    for index, lvl in enumerate(reader.levels):
        if lvl.downsample <= scale * 1.0001:
            best = index
    return best


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise InvalidInputError("could not encode a JPEG tile")
    return data.tobytes()


def encode_png(rgba: np.ndarray) -> bytes:
    """PNG of RGBA pixels (overlays: transparent where nothing is drawn)."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise InvalidInputError("could not encode a PNG tile")
    return data.tobytes()


class SlideTiles:
    """JPEG Deep Zoom tiles of one open slide, cached (LRU, by bytes)."""

    def __init__(self, reader, cache: LRUCache):
        self.reader = reader
        self.grid = DeepZoomGrid(*reader.dimensions)
        self.cache = cache
        # A reader that may not serve threads at once is read under a lock; encoding runs outside it.
        self._lock = None if reader.thread_safe else threading.Lock()
        self._coarsest: np.ndarray | None = None
        self._coarsest_lock = threading.Lock()

    def coarsest(self) -> np.ndarray | None:
        """The slide's coarsest level, read once, when small enough to keep."""
        last = self.reader.levels[-1]
        if last.width * last.height > COARSEST_MAX_PIXELS:
            return None
        with self._coarsest_lock:
            if self._coarsest is None:
                self._coarsest = self._read(
                    lambda: self.reader.read_region((0, 0), len(self.reader.levels) - 1, (last.width, last.height))
                )
            return self._coarsest

    def _read(self, read):
        if self._lock is None:
            return read()
        with self._lock:
            return read()

    def tile(self, level: int, col: int, row: int) -> bytes | None:
        """The tile's JPEG bytes, or None when the slide has no such tile."""
        box = self.grid.box(level, col, row)
        if box is None:
            return None
        key = (id(self), level, col, row)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        coarsest = self.coarsest() if box.scale >= self.reader.levels[-1].downsample else None
        pixels = self._read(lambda: read_tile(self.reader, self.grid, box, coarsest))
        data = encode_jpeg(pixels)
        self.cache.put(key, data)
        return data
