"""Fast region reads straight from a TIFF's tiles.

For pyramid levels stored as tiled TIFF pages (SVS, generic pyramidal TIFF, OME-TIFF, our
synthetic slides), a region is read by fetching only the bytes of the tiles it touches
(``os.pread``: no shared file position, safe across threads and forked workers) and decoding
them with tifffile's own decoder (imagecodecs). This skips the backends' per-call overhead
(openslide's cairo compositing and RGBA conversion, tiffslide's generic machinery), and is
several times faster for tile-sized reads. A region that is exactly one JPEG tile (tiling a
level at its own tile size) is decoded by libjpeg-turbo straight into the caller's buffer, e.g.
the tile's place in a shard: no intermediate array, no copies. Other regions are assembled from
decoded tiles, of which each thread keeps its last few: neighbouring reads smaller than a tile
decode it once.

Only what is known to give the same pixels as openslide is served: each level must map to a
page of exactly its dimensions, with an allow-listed compression, 8-bit RGB, no missing tiles.
Everything else (NDPI strips, Aperio YCbCr JPEG 2000, SubIFD-only levels, odd layouts) is left
to the backend. ``WSIPIPE_DIRECT_TILES=0`` turns the fast path off.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from wsipipe.errors import SlideOpenError
from wsipipe.slide.base import Level

# Compressions whose decoded pixels were checked against openslide (tests/slide/test_tiff_tiles.py):
# none, LZW, deflate (lossless), JPEG (libjpeg-turbo in both), Aperio JPEG 2000 RGB (OpenJPEG).
SUPPORTED_COMPRESSIONS = {1, 5, 8, 32946, 7, 33005}
PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR = 2, 6
COMPRESSION_JPEG = 7
ENV_SWITCH = "WSIPIPE_DIRECT_TILES"
# Decoded tiles each thread keeps (~6 MB of 512 px tiles): reads smaller than a tile or straddling
# tiles (tiling at 256 or 224 px from 512 px tiles) then decode each tile once, not once per read.
CACHED_TILES_PER_THREAD = 8


def direct_tiles_enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in {"0", "false", "no", "off"}


class TiledPages:
    """Region reads of the levels of one TIFF file whose pages allow decoding tiles directly."""

    def __init__(self, path: Path, pages: dict[int, Any], tiff):
        self._tiff = tiff  # kept open: the pages' decoders belong to it
        self._pages = pages
        self._path = path
        self._fd = os.open(path, os.O_RDONLY)
        self._thread = threading.local()  # each thread's decoded-tile cache
        #: JPEG levels and the (JPEG, output) colour spaces their tiles decode with.
        self._jpeg_colorspaces = {
            level: _jpeg_colorspaces(page) for level, page in pages.items() if int(page.compression) == COMPRESSION_JPEG
        }

    @classmethod
    def open(cls, path: str | os.PathLike, levels: list[Level]) -> TiledPages | None:
        """Map each of ``levels`` to a directly decodable page of the same size, or None if none is."""
        import tifffile

        if not direct_tiles_enabled():
            return None
        try:
            tiff = tifffile.TiffFile(path)
        except Exception:  # not a TIFF (or one tifffile rejects): the backend reads it
            return None
        try:
            # openslide (Aperio, generic TIFF) and tifffile's pyramids only take tiled pages as levels.
            candidates = [page for page in tiff.pages if isinstance(page, tifffile.TiffPage) and page.is_tiled]
            pages: dict[int, object] = {}
            for index, level in enumerate(levels):
                for page in candidates:
                    if (page.imagewidth, page.imagelength) == (
                        level.width,
                        level.height,
                    ) and page not in pages.values():
                        if _directly_decodable(page):
                            pages[index] = page
                        break  # the first page of this size is the level; decodable or not
        except Exception:
            tiff.close()
            return None
        if not pages:
            tiff.close()
            return None
        return cls(Path(path), pages, tiff)

    def covers(self, level: int) -> bool:
        return level in self._pages

    def page(self, level: int):
        """The TIFF page (tifffile) holding ``level``."""
        return self._pages[level]

    def jpeg_colorspaces(self, level: int) -> tuple[int | None, int] | None:
        """(JPEG, output) colour spaces of a JPEG level's tiles (``_jpeg_colorspaces``); None for another codec."""
        return self._jpeg_colorspaces.get(level)

    def jpeg_stream(self, level: int, index: int) -> bytes:
        """Tile ``index`` of a JPEG level as a complete JPEG (the page's shared tables spliced in
        after its start marker), for a decoder that takes whole JPEG files (nvJPEG)."""
        page = self._pages[level]
        with self._reading_tile(index):
            data = self._tile_bytes(page, index)
        return page.jpegtables[:-2] + data[2:] if page.jpegtables else data

    def read(self, level: int, x: int, y: int, width: int, height: int, out: np.ndarray | None = None) -> np.ndarray:
        """RGB (height, width, 3) of the region at level coordinates (x, y), into ``out`` when
        given; white beyond the edge."""
        page = self._pages[level]
        tile_w, tile_h = page.tilewidth, page.tilelength
        image_w, image_h = page.imagewidth, page.imagelength
        across = math.ceil(image_w / tile_w)
        if out is None:
            out = np.empty((height, width, 3), np.uint8)
        if (
            level in self._jpeg_colorspaces
            and self._is_whole_tile(page, x, y, width, height)
            and out.flags.c_contiguous
        ):
            self._decode_jpeg_into(out, level, (y // tile_h) * across + x // tile_w)
            return out
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, image_w), min(y + height, image_h)
        if (x0, y0, x1, y1) != (x, y, x + width, y + height):
            out[...] = 255
        if x1 <= x0 or y1 <= y0:
            return out
        for ty in range(y0 // tile_h, (y1 - 1) // tile_h + 1):
            for tx in range(x0 // tile_w, (x1 - 1) // tile_w + 1):
                tile = self._decoded(level, ty * across + tx)
                # Intersection of this tile with the requested region, in level coordinates.
                left, top = max(tx * tile_w, x0), max(ty * tile_h, y0)
                right, bottom = min((tx + 1) * tile_w, x1), min((ty + 1) * tile_h, y1)
                out[top - y : bottom - y, left - x : right - x] = tile[
                    top - ty * tile_h : bottom - ty * tile_h, left - tx * tile_w : right - tx * tile_w
                ]
        return out

    @staticmethod
    def _is_whole_tile(page, x: int, y: int, width: int, height: int) -> bool:
        """Whether the region is exactly one of the page's tiles, all inside the image (edge
        tiles are padded in the file: only part of their pixels are the image's)."""
        return (
            (width, height) == (page.tilewidth, page.tilelength)
            and x >= 0
            and y >= 0
            and x % width == 0
            and y % height == 0
            and x + width <= page.imagewidth
            and y + height <= page.imagelength
        )

    def _decode_jpeg_into(self, out: np.ndarray, level: int, index: int) -> None:
        """Decode one JPEG tile straight into ``out`` (no intermediate array, no copy): the
        same libjpeg-turbo call with the same colour spaces as tifffile's decoder."""
        import imagecodecs

        page = self._pages[level]
        colorspace, outcolorspace = self._jpeg_colorspaces[level]
        with self._reading_tile(index):
            imagecodecs.jpeg8_decode(
                self._tile_bytes(page, index),
                tables=page.jpegtables,
                colorspace=colorspace,
                outcolorspace=outcolorspace,
                shape=(page.tilelength, page.tilewidth),
                out=out,
            )

    def _decoded(self, level: int, index: int) -> np.ndarray:
        """Tile ``index`` of ``level``, decoded, from this thread's cache of recent tiles when there."""
        cache = getattr(self._thread, "tiles", None)
        if cache is None:
            cache = self._thread.tiles = OrderedDict()
        key = (level, index)
        tile = cache.get(key)
        if tile is None:
            tile = cache[key] = self._decode(self._pages[level], index)
            tile.flags.writeable = False  # shared by later reads
            if len(cache) > CACHED_TILES_PER_THREAD:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return tile

    def _decode(self, page, index: int) -> np.ndarray:
        with self._reading_tile(index):
            segment = page.decode(self._tile_bytes(page, index), index, jpegtables=page.jpegtables)[0]
            return segment.reshape(segment.shape[-3:])

    def _tile_bytes(self, page, index: int) -> bytes:
        return os.pread(self._fd, page.databytecounts[index], page.dataoffsets[index])

    @contextmanager
    def _reading_tile(self, index: int):
        """Short reads and codec errors alike become the one-line corrupt-file error."""
        try:
            yield
        except Exception as exc:
            raise SlideOpenError(
                f"{self._path}: cannot read pixels, the file is corrupt or truncated (tile {index}: {exc})"
            ) from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tiff.close()


def _jpeg_colorspaces(page) -> tuple[int | None, int]:
    """What tifffile's decoder asks libjpeg for with the pages ``_directly_decodable`` admits:
    RGB out; the JPEG's own colour space taken as RGB when it is tagged RGB without a JFIF
    marker (Aperio), else as the JPEG says (YCbCr)."""
    if int(page.photometric) == PHOTOMETRIC_RGB and not page.is_jfif:
        return PHOTOMETRIC_RGB, PHOTOMETRIC_RGB
    return None, PHOTOMETRIC_RGB


def _directly_decodable(page) -> bool:
    """Real tiles (not NDPI's), 8-bit contiguous RGB, an allow-listed codec, no missing tiles."""
    compression, photometric = int(page.compression), int(page.photometric)
    if page.is_ndpi or getattr(page, "jpegheader", None) is not None:
        return False  # NDPI: tifffile's "tiles" are restart intervals of one JPEG, not JPEGs
    if not page.is_tiled or compression not in SUPPORTED_COMPRESSIONS:
        return False
    if photometric != PHOTOMETRIC_RGB and not (photometric == PHOTOMETRIC_YCBCR and compression == COMPRESSION_JPEG):
        return False
    if page.samplesperpixel != 3 or page.bitspersample != 8 or int(page.planarconfig) != 1:
        return False
    if page.imagedepth > 1 or page.tiledepth > 1:
        return False
    return all(count > 0 for count in page.databytecounts)
