"""Reader backed by OpenSlide (SVS, NDPI, MRXS, generic tiled TIFF, ...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide

from wsipipe.errors import SlideOpenError
from wsipipe.slide.base import HandleReader
from wsipipe.slide.tiff_tiles import TiledPages

# Formats whose levels openslide reads as whole TIFF pages, tile by tile, without overlaps,
# so decoding the page's tiles directly yields openslide's pixels.
DIRECT_TILE_VENDORS = {"aperio", "generic-tiff"}


class OpenSlideReader(HandleReader):
    backend = "openslide"
    thread_safe = True  # OpenSlide's handles are; the direct tile path reads with os.pread
    _property_prefix = "openslide"

    def __init__(self, path: Path, mpp_override: float | None = None):
        super().__init__(path, mpp_override)
        try:
            handle = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideOpenError(f"{path}: not a slide openslide can read ({exc})") from exc
        self._adopt(handle, handle.level_dimensions, handle.level_downsamples)
        if self.vendor in DIRECT_TILE_VENDORS:
            self._direct_tiles = TiledPages.open(path, self._levels)

    def _read_raw(self, x, y, level, width, height) -> np.ndarray:
        try:
            image = self._slide.read_region((x, y), level, (width, height))
        except openslide.OpenSlideError as exc:
            raise SlideOpenError(f"{self.path}: cannot read pixels, the file is corrupt or truncated ({exc})") from exc
        return np.asarray(image)
