"""Reader backed by tiffslide (tifffile): OME-TIFF and other TIFFs openslide does not take."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tiffslide

from wsipipe.errors import SlideOpenError
from wsipipe.slide.base import HandleReader
from wsipipe.slide.tiff_tiles import TiledPages


class TiffSlideReader(HandleReader):
    backend = "tiffslide"
    _in_bounds_only = True
    _property_prefix = "tiffslide"

    def __init__(self, path: Path, mpp_override: float | None = None):
        super().__init__(path, mpp_override)
        try:
            handle = tiffslide.TiffSlide(str(path))
            dimensions, downsamples = handle.level_dimensions, handle.level_downsamples
        except Exception as exc:  # tifffile raises many types for non-TIFF input
            raise SlideOpenError(f"{path}: not a slide tiffslide can read ({exc})") from exc
        self._adopt(handle, dimensions, downsamples)
        self._direct_tiles = TiledPages.open(path, self._levels)

    @property
    def vendor(self) -> str | None:
        vendor = super().vendor
        if vendor:
            return vendor
        return "ome-tiff" if self._slide.ts_tifffile.is_ome else "generic-tiff"

    def _read_raw(self, x, y, level, width, height) -> np.ndarray:
        try:
            pixels = self._slide.read_region((x, y), level, (width, height), as_array=True)
        except Exception as exc:
            raise SlideOpenError(f"{self.path}: cannot read pixels, the file is corrupt or truncated ({exc})") from exc
        pixels = np.asarray(pixels)
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        return pixels[..., :4] if pixels.shape[2] >= 4 else pixels[..., :3]
