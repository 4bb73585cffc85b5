"""Reader backed by OpenSlide (SVS, NDPI, MRXS, generic tiled TIFF, ...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide

from wsipipe.errors import SlideOpenError
from wsipipe.slide.base import Level, SlideReader, parse_float
from wsipipe.slide.tiff_tiles import TiledPages


# Formats whose levels openslide reads as whole TIFF pages, tile by tile, without overlaps,
# so decoding the page's tiles directly yields openslide's pixels.
DIRECT_TILE_VENDORS = {"aperio", "generic-tiff"}


class OpenSlideReader(SlideReader):
    backend = "openslide"
    thread_safe = True  # OpenSlide's handles are; the direct tile path reads with os.pread

    def __init__(self, path: Path, mpp_override: float | None = None):
        super().__init__(path, mpp_override)
        try:
            self._slide = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideOpenError(f"{path}: not a slide openslide can read ({exc})") from exc
        props = self._slide.properties
        self._props = props
        self._levels = [
            Level(int(w), int(h), float(d))
            for (w, h), d in zip(self._slide.level_dimensions, self._slide.level_downsamples)
        ]
        if self.vendor in DIRECT_TILE_VENDORS:
            self._direct_tiles = TiledPages.open(path, self._levels)

    @property
    def vendor(self) -> str | None:
        return self._props.get(openslide.PROPERTY_NAME_VENDOR)

    @property
    def levels(self) -> list[Level]:
        return self._levels

    @property
    def _metadata_mpp(self):
        return (
            parse_float(self._props.get(openslide.PROPERTY_NAME_MPP_X)),
            parse_float(self._props.get(openslide.PROPERTY_NAME_MPP_Y)),
        )

    @property
    def objective_power(self) -> float | None:
        return parse_float(self._props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))

    @property
    def associated_images(self) -> list[str]:
        return sorted(self._slide.associated_images)

    def _read_raw(self, x, y, level, width, height) -> np.ndarray:
        try:
            image = self._slide.read_region((x, y), level, (width, height))
        except openslide.OpenSlideError as exc:
            raise SlideOpenError(f"{self.path}: cannot read pixels, the file is corrupt or truncated ({exc})") from exc
        return np.asarray(image)

    def close(self) -> None:
        if self._direct_tiles is not None:
            self._direct_tiles.close()
        self._slide.close()
