"""The reader interface every slide backend implements.

Backends only provide raw RGBA/RGB reads of a level; this class adds what the pipeline relies
on everywhere: compositing on white, white beyond the slide edge, choosing levels by µm/px and
resizing exactly to a target µm/px.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from wsipipe.errors import InvalidInputError, MppUnknownError

if TYPE_CHECKING:
    from wsipipe.slide.tiff_tiles import TiledPages

# How much coarser than the pyramid's smallest level a read may go by resizing alone.
MAX_EXTRA_DOWNSAMPLE = 32.0
# How much coarser than the pyramid's smallest level a built level (``wsipipe.slide.built``) may be.
MAX_BUILT_DOWNSAMPLE = 1024
# A µm/px at which the whole slide is narrower than this (pixels, longest side) is refused as absurd.
MIN_SLIDE_SIDE = 8
# Relative tolerance when matching a requested µm/px to a level's (scanner metadata is rounded).
MPP_TOLERANCE = 0.01


@dataclass(frozen=True)
class Level:
    width: int
    height: int
    downsample: float


class SlideReader(ABC):
    """One open slide. Coordinates passed in are level-0 pixels unless stated otherwise."""

    backend: str = ""
    #: Whether one reader may serve several threads at once (else each thread opens its own).
    thread_safe: bool = False

    def __init__(self, path: Path, mpp_override: float | None = None):
        self.path = Path(path)
        self._mpp_override = mpp_override

    # --- what a backend provides -------------------------------------------------------------
    @property
    @abstractmethod
    def vendor(self) -> str | None: ...

    @property
    @abstractmethod
    def levels(self) -> list[Level]: ...

    @property
    @abstractmethod
    def _metadata_mpp(self) -> tuple[float | None, float | None]: ...

    @property
    @abstractmethod
    def objective_power(self) -> float | None: ...

    @property
    @abstractmethod
    def associated_images(self) -> list[str]: ...

    @property
    def properties(self) -> dict[str, str]:
        """The slide's raw metadata (vendor keys and values); empty when the backend has none."""
        return {}

    @abstractmethod
    def _read_raw(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """Pixels of a region as (h, w, 3) RGB or (h, w, 4) RGBA with straight alpha.

        Out-of-slide pixels must come back transparent (RGBA) or be left to the caller (RGB,
        in-bounds requests only; see ``_in_bounds_only``).
        """

    #: True when ``_read_raw`` can only serve requests inside the level (the base pads).
    _in_bounds_only = False
    #: Direct tile decoder for levels stored as plain tiled TIFF pages (``tiff_tiles.TiledPages``),
    #: set by backends where it gives the backend's own pixels; None reads through the backend.
    _direct_tiles: TiledPages | None = None

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release file handles."""

    @property
    def direct_tiles(self):
        """The direct tile decoder (``tiff_tiles.TiledPages``) of this slide's levels, or None."""
        return self._direct_tiles

    # --- derived ---------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.levels[0].width, self.levels[0].height

    @property
    def mpp_x(self) -> float | None:
        return self._mpp_override or self._metadata_mpp[0]

    @property
    def mpp_y(self) -> float | None:
        return self._mpp_override or self._metadata_mpp[1] or self._metadata_mpp[0]

    @property
    def mpp(self) -> float:
        """Level-0 µm/px (x), or a clear error naming --mpp-override."""
        if self.mpp_x is None:
            raise MppUnknownError(str(self.path))
        return self.mpp_x

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.levels[level].downsample

    def check_mpp(self, mpp: float, buildable: bool = False) -> None:
        """Refuse µm/px values the slide cannot provide; ``buildable``: the caller builds a level
        coarser than the pyramid's when needed (``wsipipe.slide.built.with_level_for``)."""
        if not math.isfinite(mpp) or mpp <= 0:
            raise InvalidInputError(f"µm/px must be a positive number, got {mpp}")
        base = self.mpp
        if mpp < base * (1 - MPP_TOLERANCE):
            raise InvalidInputError(f"{mpp} µm/px is finer than the slide's level 0 ({base:.4g} µm/px)")
        coarsest = self.level_mpp(len(self.levels) - 1)
        if buildable:
            whole = base * max(self.dimensions) / MIN_SLIDE_SIDE
            built = coarsest * MAX_BUILT_DOWNSAMPLE
            if mpp > min(whole, built):
                reason = f"the slide is then {MIN_SLIDE_SIDE} px across" if whole <= built else "from a built level"
                raise InvalidInputError(
                    f"{mpp} µm/px is too coarse for this slide: at most {min(whole, built):.4g} can be read ({reason})"
                )
        elif mpp > coarsest * MAX_EXTRA_DOWNSAMPLE:
            raise InvalidInputError(
                f"{mpp} µm/px is too coarse for this slide: its smallest level is {coarsest:.4g} µm/px "
                f"(at most {coarsest * MAX_EXTRA_DOWNSAMPLE:.4g} can be read without building a coarser level)"
            )

    def level_for_mpp(self, mpp: float) -> int:
        """The coarsest level that is at least as fine as ``mpp`` (the nearest finer level)."""
        self.check_mpp(mpp)
        best = 0
        for index in range(len(self.levels)):
            if self.level_mpp(index) <= mpp * (1 + MPP_TOLERANCE):
                best = index
        return best

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int], out: np.ndarray | None = None
    ) -> np.ndarray:
        """RGB uint8 (h, w, 3) of ``size`` at ``level``, from level-0 ``location``; written into
        ``out`` when given (a tile of a shard, say: a whole JPEG tile is then decoded in place).

        Transparent pixels are composited on white; pixels beyond the slide edge are white.
        """
        x, y = int(location[0]), int(location[1])
        width, height = int(size[0]), int(size[1])
        if width <= 0 or height <= 0:
            raise InvalidInputError(f"region size must be positive, got {width}x{height}")
        if self._direct_tiles is not None and self._direct_tiles.covers(level):
            # Only at whole level pixels: elsewhere openslide resamples by a sub-pixel shift.
            downsample = self.levels[level].downsample
            lx, ly = x / downsample, y / downsample
            if lx.is_integer() and ly.is_integer():
                return self._direct_tiles.read(level, int(lx), int(ly), width, height, out)
        if self._in_bounds_only:
            return _into(out, self._read_padded(x, y, level, width, height))
        return _into(out, _composite_on_white(self._read_raw(x, y, level, width, height)))

    def _read_padded(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        lvl = self.levels[level]
        # Requested rectangle in level coordinates, clipped to the level.
        lx0, ly0 = math.floor(x / lvl.downsample), math.floor(y / lvl.downsample)
        cx0, cy0 = max(lx0, 0), max(ly0, 0)
        cx1, cy1 = min(lx0 + width, lvl.width), min(ly0 + height, lvl.height)
        out = np.full((height, width, 3), 255, np.uint8)
        if cx1 > cx0 and cy1 > cy0:
            inner = self._read_raw(
                round(cx0 * lvl.downsample), round(cy0 * lvl.downsample), level, cx1 - cx0, cy1 - cy0
            )
            out[cy0 - ly0 : cy1 - ly0, cx0 - lx0 : cx1 - lx0] = _composite_on_white(inner)
        return out

    def read_at_mpp(
        self, location: tuple[float, float], size: tuple[int, int], mpp: float, out: np.ndarray | None = None
    ) -> np.ndarray:
        """RGB (h, w, 3) covering ``size`` output pixels at ``mpp`` µm/px from level-0 ``location``
        (into ``out`` when given).

        Reads the nearest finer level and resizes (area interpolation) to exactly ``size``.
        """
        level = self.level_for_mpp(mpp)
        scale = mpp / self.level_mpp(level)
        width, height = size
        if abs(scale - 1) <= MPP_TOLERANCE / 10:
            return self.read_region((round(location[0]), round(location[1])), level, size, out)
        src_w, src_h = max(1, round(width * scale)), max(1, round(height * scale))
        region = self.read_region((round(location[0]), round(location[1])), level, (src_w, src_h))
        return _into(out, cv2.resize(region, (width, height), interpolation=cv2.INTER_AREA))

    def thumbnail_at_mpp(self, mpp: float) -> np.ndarray:
        """The whole slide at ``mpp`` (which may be coarser than any level), RGB."""
        width, height = self.dimensions
        out_w = max(1, round(width * self.mpp / mpp))
        out_h = max(1, round(height * self.mpp / mpp))
        level = len(self.levels) - 1
        while level > 0 and self.level_mpp(level) > mpp * (1 + MPP_TOLERANCE):
            level -= 1
        lvl = self.levels[level]
        region = self.read_region((0, 0), level, (lvl.width, lvl.height))
        return cv2.resize(region, (out_w, out_h), interpolation=cv2.INTER_AREA)

    def info(self) -> dict:
        """Metadata as ``wsipipe info --json`` prints it."""
        return {
            "path": str(self.path),
            "vendor": self.vendor,
            "backend": self.backend,
            "width": self.dimensions[0],
            "height": self.dimensions[1],
            "levels": [{"width": lvl.width, "height": lvl.height, "downsample": lvl.downsample} for lvl in self.levels],
            "mpp_x": self.mpp_x,
            "mpp_y": self.mpp_y,
            "objective_power": self.objective_power,
            "associated_images": self.associated_images,
        }


def _into(out: np.ndarray | None, pixels: np.ndarray) -> np.ndarray:
    """``pixels``, copied into ``out`` when the caller gave one."""
    if out is None:
        return pixels
    out[...] = pixels
    return out


def _composite_on_white(pixels: np.ndarray) -> np.ndarray:
    """RGB from RGB or straight-alpha RGBA, transparent areas becoming white."""
    if pixels.shape[2] == 3:
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    if bool((pixels[..., 3] == 255).all()):  # opaque (the usual case): no arithmetic
        return np.ascontiguousarray(pixels[..., :3])
    rgb = pixels[..., :3].astype(np.uint16)
    alpha = pixels[..., 3:4].astype(np.uint16)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def parse_float(value) -> float | None:
    """A metadata number, or None when absent or unparsable."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


class HandleReader(SlideReader):
    """A reader over an OpenSlide-style handle (``openslide.OpenSlide``, ``tiffslide.TiffSlide``):
    both expose levels, properties and associated images the same way, under property names
    that differ only in their prefix. A backend opens its handle and passes it to ``_adopt``."""

    #: The prefix of the handle's own properties ("openslide" or "tiffslide").
    _property_prefix = ""

    def _adopt(self, handle, dimensions, downsamples) -> None:
        self._slide = handle
        self._props = handle.properties
        self._levels = [Level(int(w), int(h), float(d)) for (w, h), d in zip(dimensions, downsamples)]

    def _property(self, name: str):
        return self._props.get(f"{self._property_prefix}.{name}")

    @property
    def vendor(self) -> str | None:
        return self._property("vendor")

    @property
    def levels(self) -> list[Level]:
        return self._levels

    @property
    def _metadata_mpp(self):
        return parse_float(self._property("mpp-x")), parse_float(self._property("mpp-y"))

    @property
    def objective_power(self) -> float | None:
        return parse_float(self._property("objective-power"))

    @property
    def associated_images(self) -> list[str]:
        return sorted(self._slide.associated_images)

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._props)

    def close(self) -> None:
        if self._direct_tiles is not None:
            self._direct_tiles.close()
        self._slide.close()
