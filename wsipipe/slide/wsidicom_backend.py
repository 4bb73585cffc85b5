"""Reader backed by wsidicom: DICOM WSI series openslide refuses (JPEG-LS, RLE, HTJ2K, JPEG XL,
implicit-VR native pixels; see docs/dicom.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsipipe.errors import SlideOpenError
from wsipipe.slide.base import Level, SlideReader


class WsiDicomReader(SlideReader):
    backend = "wsidicom"
    _in_bounds_only = True

    def __init__(self, path: Path, mpp_override: float | None = None):
        super().__init__(path, mpp_override)
        from wsidicom import WsiDicom

        from wsipipe.dicom.series import resolve_series

        series = resolve_series(path)
        try:
            self._wsi = WsiDicom.open([instance.path for instance in series.instances])
            pyramid = list(self._wsi.levels)
        except Exception as exc:  # wsidicom raises its own and pydicom's types
            raise SlideOpenError(f"{path}: not a series wsidicom can read ({type(exc).__name__}: {exc})") from exc
        base = pyramid[0].size
        # wsidicom addresses a level by its power-of-two index and reads in that level's pixels.
        self._pyramid_index = [level.level for level in pyramid]
        self._levels = [
            Level(
                level.size.width,
                level.size.height,
                (base.width / level.size.width + base.height / level.size.height) / 2,
            )
            for level in pyramid
        ]
        spacing = pyramid[0].mpp  # µm/px as (width, height)
        self._mpp = (float(spacing.width), float(spacing.height)) if spacing is not None else (None, None)

    @property
    def vendor(self) -> str | None:
        return "dicom"

    @property
    def levels(self) -> list[Level]:
        return self._levels

    @property
    def _metadata_mpp(self):
        return self._mpp

    @property
    def objective_power(self) -> float | None:
        return None  # openslide reports none for DICOM either: the two backends agree

    @property
    def associated_images(self) -> list[str]:
        # openslide's names: the overview is the "macro".
        names = []
        if self._wsi.labels:
            names.append("label")
        if self._wsi.overviews:
            names.append("macro")
        return names

    def _read_raw(self, x, y, level, width, height) -> np.ndarray:
        downsample = self._levels[level].downsample
        location = (round(x / downsample), round(y / downsample))
        try:
            image = self._wsi.read_region(location, self._pyramid_index[level], (width, height))
        except Exception as exc:
            raise SlideOpenError(f"{self.path}: cannot read pixels, the file is corrupt or truncated ({exc})") from exc
        return np.asarray(image.convert("RGB"))

    def close(self) -> None:
        self._wsi.close()
