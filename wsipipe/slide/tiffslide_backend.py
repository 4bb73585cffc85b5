"""Reader backed by tiffslide (tifffile): OME-TIFF and other TIFFs openslide does not take."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tiffslide

from wsipipe.errors import SlideOpenError
from wsipipe.slide.base import Level, SlideReader, parse_float
from wsipipe.slide.tiff_tiles import TiledPages


class TiffSlideReader(SlideReader):
    backend = "tiffslide"
    _in_bounds_only = True

    def __init__(self, path: Path, mpp_override: float | None = None):
        super().__init__(path, mpp_override)
        try:
            self._slide = tiffslide.TiffSlide(str(path))
            dims = self._slide.level_dimensions
            downsamples = self._slide.level_downsamples
        except Exception as exc:  # tifffile raises many types for non-TIFF input
            raise SlideOpenError(f"{path}: not a slide tiffslide can read ({exc})") from exc
        self._props = self._slide.properties
        self._levels = [Level(int(w), int(h), float(d)) for (w, h), d in zip(dims, downsamples)]
        self._direct_tiles = TiledPages.open(path, self._levels)

    @property
    def vendor(self) -> str | None:
        vendor = self._props.get(tiffslide.PROPERTY_NAME_VENDOR)
        if vendor:
            return vendor
        tiff = self._slide.ts_tifffile
        return "ome-tiff" if tiff.is_ome else "generic-tiff"

    @property
    def levels(self) -> list[Level]:
        return self._levels

    @property
    def _metadata_mpp(self):
        return (
            parse_float(self._props.get(tiffslide.PROPERTY_NAME_MPP_X)),
            parse_float(self._props.get(tiffslide.PROPERTY_NAME_MPP_Y)),
        )

    @property
    def objective_power(self) -> float | None:
        return parse_float(self._props.get(tiffslide.PROPERTY_NAME_OBJECTIVE_POWER))

    @property
    def associated_images(self) -> list[str]:
        return sorted(self._slide.associated_images)

    def _read_raw(self, x, y, level, width, height) -> np.ndarray:
        try:
            pixels = self._slide.read_region((x, y), level, (width, height), as_array=True)
        except Exception as exc:
            raise SlideOpenError(f"{self.path}: cannot read pixels, the file is corrupt or truncated ({exc})") from exc
        pixels = np.asarray(pixels)
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        return pixels[..., :4] if pixels.shape[2] >= 4 else pixels[..., :3]

    def close(self) -> None:
        if self._direct_tiles is not None:
            self._direct_tiles.close()
        self._slide.close()
