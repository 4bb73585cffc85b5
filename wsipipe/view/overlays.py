"""Overlay tiles on the slide's Deep Zoom grid: an overlay tile covers exactly the slide tile of
the same address, so the browser stacks them without any registration of its own.

Rasters (the prediction's label map and tumour probability, the tissue mask, the cellularity
heatmap) are sampled nearest-neighbour at each tile pixel's centre, so they stay aligned to the
slide within one of their own pixels at every zoom. Polygons (regions, nuclei) are drawn as
outlines at the tile's scale.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import cv2
import numpy as np

from wsipipe.report.render import heat_colour
from wsipipe.view.deepzoom import TileBox

#: Level-0 px per bin of the polygon index.
BIN_SIZE = 1024
#: A polygon over more bins than this is found by its bounds instead of through the bins.
LARGE_BINS = 64
#: The farthest an outline point is drawn from a tile, in its fixed-point units (2^23 px).
FIXED_POINT_LIMIT = 1 << 27
#: Nuclei are drawn where a tile pixel is at most this many µm (smaller ones are not legible).
NUCLEI_MAX_UM_PER_PX = 0.5
#: The largest side of a raster made from per-tile figures (the cellularity heatmap).
HEATMAP_MAX_SIDE = 4096


def class_palette(class_names: list[str], alpha: int = 255) -> np.ndarray:
    """RGBA per class index (256 entries) from the one palette (``wsipipe.classes``); class 0 transparent."""
    from wsipipe.classes import palette as class_colours

    palette = np.zeros((256, 4), np.uint8)
    for index, colour in enumerate(class_colours(class_names)):
        if index:
            palette[index] = (*colour, alpha)
    return palette


def heat_palette() -> np.ndarray:
    """RGBA for probabilities 0..255: the report's heat colours, alpha growing with the value."""
    palette = np.zeros((256, 4), np.uint8)
    for value in range(256):
        palette[value, :3] = np.rint(heat_colour(value / 255))
        palette[value, 3] = value
    return palette


def sample_indices(box: TileBox, level0_per_px: float, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices into a raster (``level0_per_px`` level-0 px per pixel) of each tile
    pixel's centre."""
    width, height = box.size
    xs = (box.x0 + np.arange(width) + 0.5) * box.scale
    ys = (box.y0 + np.arange(height) + 0.5) * box.scale
    cols = np.clip(np.floor(xs / level0_per_px).astype(np.int64), 0, shape[1] - 1)
    rows = np.clip(np.floor(ys / level0_per_px).astype(np.int64), 0, shape[0] - 1)
    return rows, cols


class RasterOverlay:
    """One RGBA raster (or a pyramid of index rasters with a palette) over the slide."""

    def __init__(self, levels, level0_per_px: float, palette: np.ndarray | None = None):
        """``levels``: arrays (zarr or numpy), each 2x coarser than the one before; RGBA
        (h, w, 4) when ``palette`` is None, else uint8 indices into ``palette``."""
        self.levels = list(levels)
        self.level0_per_px = float(level0_per_px)
        self.palette = palette

    def render(self, box: TileBox) -> np.ndarray:
        level = 0
        while level + 1 < len(self.levels) and self.level0_per_px * 2 ** (level + 1) <= box.scale:
            level += 1
        array = self.levels[level]
        rows, cols = sample_indices(box, self.level0_per_px * 2**level, array.shape[:2])
        window = np.asarray(array[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
        values = window[np.ix_(rows - rows[0], cols - cols[0])]
        return values if self.palette is None else self.palette[values]


class PolygonOverlay:
    """Polygon outlines (level-0 coordinates), found through a coarse bin index."""

    def __init__(
        self,
        polygons: list[np.ndarray],
        colours: list[tuple[int, int, int]],
        extent: tuple[int, int],
        thickness: int,
        max_scale: float = math.inf,
    ):
        """``extent``: the slide's level-0 (width, height); a polygon is indexed over the bins it
        covers within it only, so coordinates far outside (or not finite) cost nothing."""
        self.polygons = polygons
        self.colours = colours
        self.thickness = thickness
        self.max_scale = max_scale  # coarser tiles stay empty
        self.bins: dict[tuple[int, int], list[int]] = {}
        # Polygons over more than LARGE_BINS bins are listed once with their bounds (a region
        # may cover the whole slide; a file of many such would otherwise fill millions of bins).
        self.large: list[int] = []
        large_bounds = []
        last_bin = np.array([(extent[0] - 1) // BIN_SIZE, (extent[1] - 1) // BIN_SIZE])
        for index, points in enumerate(polygons):
            if not np.isfinite(points).all():
                continue
            low, high = points.min(axis=0), points.max(axis=0)
            (bx0, by0), (bx1, by1) = (
                np.clip(low // BIN_SIZE, 0, last_bin).astype(int),
                np.clip(high // BIN_SIZE, 0, last_bin).astype(int),
            )
            if (bx1 - bx0 + 1) * (by1 - by0 + 1) > LARGE_BINS:
                self.large.append(index)
                large_bounds.append((*low, *high))
                continue
            for bx in range(bx0, bx1 + 1):
                for by in range(by0, by1 + 1):
                    self.bins.setdefault((bx, by), []).append(index)
        self.large_bounds = np.array(large_bounds, np.float64).reshape(-1, 4)

    def render(self, box: TileBox) -> np.ndarray:
        width, height = box.size
        canvas = np.zeros((height, width, 4), np.uint8)
        if box.scale > self.max_scale:
            return canvas
        margin = self.thickness * box.scale
        x0, y0 = box.x0 * box.scale - margin, box.y0 * box.scale - margin
        x1, y1 = box.x1 * box.scale + margin, box.y1 * box.scale + margin
        chosen: set[int] = set()
        for bx in range(int(x0 // BIN_SIZE), int(x1 // BIN_SIZE) + 1):
            for by in range(int(y0 // BIN_SIZE), int(y1 // BIN_SIZE) + 1):
                chosen.update(self.bins.get((bx, by), ()))
        lx0, ly0, lx1, ly1 = self.large_bounds.T
        hits = (lx0 <= x1) & (lx1 >= x0) & (ly0 <= y1) & (ly1 >= y0)
        chosen.update(self.large[i] for i in np.flatnonzero(hits))
        for index in sorted(chosen):
            # Tile pixels, in fixed point (4 fractional bits) for sub-pixel outlines; held within
            # int32 (only a foreign file's polygon reaches that far past the slide).
            points = (self.polygons[index] / box.scale - (box.x0, box.y0)) * 16
            points = np.rint(np.clip(points, -FIXED_POINT_LIMIT, FIXED_POINT_LIMIT)).astype(np.int32)
            cv2.polylines(canvas, [points], True, (*self.colours[index], 255), self.thickness, cv2.LINE_AA, shift=4)
        return canvas


def geojson_polygons(path: Path) -> list[dict]:
    """(exterior ring as an (n, 2) array, properties) of each polygon of a GeoJSON file, holes left out."""
    data = json.loads(path.read_text(encoding="utf-8"))
    features = data.get("features", []) if isinstance(data, dict) else data
    out = []
    for feature in features:
        geometry = feature.get("geometry") or {}
        rings = []
        if geometry.get("type") == "Polygon":
            rings = [geometry["coordinates"][0]]
        elif geometry.get("type") == "MultiPolygon":
            rings = [polygon[0] for polygon in geometry["coordinates"]]
        for ring in rings:
            if len(ring) >= 3:
                out.append(
                    {"points": np.asarray(ring, np.float64)[:, :2], "properties": feature.get("properties") or {}}
                )
    return out


def classification_colour(properties: dict, fallback: tuple[int, int, int]) -> tuple[int, int, int]:
    colour = (properties.get("classification") or {}).get("color")
    if isinstance(colour, list) and len(colour) == 3:
        r, g, b = (int(c) for c in colour)
        return r, g, b
    return fallback


def heatmap_raster(tiles: list[dict], dimensions: tuple[int, int]) -> tuple[np.ndarray, float, float]:
    """(RGBA raster, level-0 px per pixel, vmax) of the nuclei stage's per-tile cellularity;
    tiles without a value (no tumour) stay transparent."""
    width, height = dimensions
    per_px = max(16.0, max(width, height) / HEATMAP_MAX_SIDE)
    raster = np.zeros((max(1, math.ceil(height / per_px)), max(1, math.ceil(width / per_px)), 4), np.uint8)
    values = [tile.get("cellularity") for tile in tiles]
    vmax = max((v for v in values if v is not None), default=0.0) or 1.0
    for tile, value in zip(tiles, values):
        if value is None:
            continue
        x0, y0, x1, y1 = tile["box_level0"]
        c0, r0 = round(x0 / per_px), round(y0 / per_px)
        c1, r1 = round(x1 / per_px), round(y1 / per_px)
        raster[r0:r1, c0:c1, :3] = np.rint(heat_colour(value / vmax))
        raster[r0:r1, c0:c1, 3] = 255
    return raster, per_px, vmax


class Lazy:
    """A value built once, on first use, by whichever thread asks first; a build that failed
    fails again at once, not after building again."""

    def __init__(self, build):
        self._build = build
        self._value = None
        self._error: Exception | None = None
        self._done = False
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if not self._done:
                try:
                    self._value = self._build()
                except Exception as exc:
                    self._error = exc
                self._done = True
            if self._error is not None:
                # without the last raise's frames, which would otherwise pile up on it request after request
                raise self._error.with_traceback(None)
            return self._value
