"""Tile grid geometry: where each tile lies in level-0 pixels and how much tissue it holds.

Tiles are ``tile_size`` pixels at the target scale (a µm/px, or a pyramid level) and step by
``tile_size - overlap``. The grid starts half an overlap before the slide's top-left corner and
reaches half an overlap past its far edges, so every slide pixel, the edges' included, lies at
least ``overlap // 2`` inside some tile (where the blending window counts it, with white glass as
its context beyond the edge); tiles reaching past the edge are padded white by the reader.
Without overlap the grid starts at (0, 0). Order is row-major (y, then x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wsipipe.errors import InvalidInputError
from wsipipe.slide.base import MPP_TOLERANCE, SlideReader


@dataclass(frozen=True)
class TileGrid:
    """Every tile position of a slide at one scale, with each tile's tissue fraction."""

    tile_size: int
    overlap: int
    #: Level-0 pixels per target pixel.
    downsample: float
    #: µm/px of the tiles (None when tiling by level on a slide without µm/px).
    mpp: float | None
    #: Pyramid level read (at ``mpp`` via resizing when it is not a level's own µm/px).
    level: int
    #: True when tiles are read at the level's own scale (no resizing).
    native: bool
    coords: np.ndarray  # (n, 2) int64 level-0 x, y
    tissue_fraction: np.ndarray  # (n,) float32

    @property
    def stride(self) -> int:
        return self.tile_size - self.overlap

    def select(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Coords and tissue fractions of the tiles with at least ``threshold`` tissue."""
        keep = self.tissue_fraction >= threshold
        return self.coords[keep], self.tissue_fraction[keep]


def validate_tiling(tile_size: int, overlap: int, tissue_threshold: float) -> None:
    if tile_size <= 0:
        raise InvalidInputError(f"{{tile_size}} must be positive, got {tile_size}", parameter="tile_size")
    if not 0 <= overlap < tile_size:
        raise InvalidInputError(
            f"{{overlap}} must be at least 0 and less than {{tile_size}} ({tile_size}), got {overlap}",
            parameter=("overlap", "tile_size"),
        )
    if not 0 <= tissue_threshold <= 1:
        raise InvalidInputError(
            f"{{tissue_threshold}} must be between 0 and 1, got {tissue_threshold}", parameter="tissue_threshold"
        )


def build_grid(
    reader: SlideReader,
    *,
    tile_size: int,
    overlap: int = 0,
    mpp: float | None = None,
    level: int | None = None,
    tissue_mask: np.ndarray | None = None,
    mask_downsample: float = 1.0,
) -> TileGrid:
    """The grid at ``mpp`` µm/px or at pyramid ``level`` (exactly one of them).

    ``tissue_mask`` (1 = tissue) covers the slide at ``mask_downsample`` level-0 px per pixel;
    without it every tile counts as all tissue.
    """
    validate_tiling(tile_size, overlap, 0.0)
    if (mpp is None) == (level is None):
        raise InvalidInputError(
            "give either a µm/px ({mpp}) or a pyramid level ({level}), not both", parameter=("mpp", "level")
        )
    if level is not None:
        if not 0 <= level < len(reader.levels):
            raise InvalidInputError(
                f"{{level}} {level} does not exist; the slide has levels 0 to {len(reader.levels) - 1}",
                parameter="level",
            )
        downsample = reader.levels[level].downsample
        tile_mpp = reader.mpp_x * downsample if reader.mpp_x is not None else None
        native = True
    else:
        assert mpp is not None  # one of the two (checked above)
        reader.check_mpp(mpp)
        level = reader.level_for_mpp(mpp)
        downsample = mpp / reader.mpp
        tile_mpp = mpp
        native = abs(mpp / reader.level_mpp(level) - 1) <= MPP_TOLERANCE / 10
    coords = grid_coords(reader.dimensions, tile_size, overlap, downsample)
    extent = tile_size * downsample
    if tissue_mask is None:
        fraction = np.ones(len(coords), np.float32)
    else:
        fraction = tissue_fractions(tissue_mask, mask_downsample, coords, extent)
    return TileGrid(tile_size, overlap, downsample, tile_mpp, level, native, coords, fraction)


def grid_coords(dimensions: tuple[int, int], tile_size: int, overlap: int, downsample: float) -> np.ndarray:
    """Level-0 top-left corners, row-major, of tiles covering a slide of ``dimensions`` and half an
    overlap (target pixels) around it."""
    extent = tile_size * downsample
    step = (tile_size - overlap) * downsample
    margin = (overlap // 2) * downsample
    counts = [max(0, math.ceil((side + 2 * margin - extent) / step)) + 1 for side in dimensions]
    xs = np.round(np.arange(counts[0]) * step - margin).astype(np.int64)
    ys = np.round(np.arange(counts[1]) * step - margin).astype(np.int64)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


def tissue_fractions(mask: np.ndarray, mask_downsample: float, coords: np.ndarray, extent: float) -> np.ndarray:
    """Fraction of tissue mask pixels inside each tile (pixels past the mask count as glass)."""
    import cv2

    height, width = mask.shape
    integral = cv2.integral((mask > 0).astype(np.uint8), sdepth=cv2.CV_64F)  # (h+1, w+1), zero first row/column
    x0 = np.round(coords[:, 0] / mask_downsample).astype(np.int64)
    y0 = np.round(coords[:, 1] / mask_downsample).astype(np.int64)
    side = max(1, round(extent / mask_downsample))
    x1, y1 = x0 + side, y0 + side
    cx0, cy0 = np.clip(x0, 0, width), np.clip(y0, 0, height)
    cx1, cy1 = np.clip(x1, 0, width), np.clip(y1, 0, height)
    inside = integral[cy1, cx1] - integral[cy0, cx1] - integral[cy1, cx0] + integral[cy0, cx0]
    return (inside / float(side * side)).astype(np.float32)


def sample_mask(
    mask: np.ndarray, level0_size: tuple[int, int], centre_y: np.ndarray, centre_x: np.ndarray
) -> np.ndarray:
    """``mask`` (covering the whole slide of ``level0_size`` = (width, height), any resolution) at
    the level-0 points ``centre_y`` x ``centre_x`` (nearest), as booleans; points past the slide take
    the mask's last row or column."""
    rows, cols = _mask_indices(mask.shape, level0_size, centre_y, centre_x)
    return mask[np.ix_(rows, cols)] > 0


def count_sampled_mask(
    mask: np.ndarray, level0_size: tuple[int, int], centre_y: np.ndarray, centre_x: np.ndarray
) -> int:
    """How many of ``sample_mask``'s points are True, without making the grid: each mask pixel
    counts as often as rows times columns sample it (a whole slide's grid in milliseconds)."""
    rows, cols = _mask_indices(mask.shape, level0_size, centre_y, centre_x)
    row_hits = np.bincount(rows, minlength=mask.shape[0])
    col_hits = np.bincount(cols, minlength=mask.shape[1])
    return int(row_hits @ (mask > 0).astype(np.int64) @ col_hits)


def _mask_indices(
    shape: tuple[int, ...], level0_size: tuple[int, int], centre_y: np.ndarray, centre_x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    width0, height0 = level0_size
    rows = np.clip((centre_y * (shape[0] / height0)).astype(np.int64), 0, shape[0] - 1)
    cols = np.clip((centre_x * (shape[1] / width0)).astype(np.int64), 0, shape[1] - 1)
    return rows, cols
