"""Burning annotations into label masks, one tile (or strip) at a time, through an STRtree.

Only the polygons whose boxes meet the requested region are drawn, so the cost of a tile depends
on what lies in it, not on the size of the slide; no level-0 full-slide mask is ever made.

A mask pixel takes a polygon's value when the pixel's centre lies inside the polygon (holes by
the even-odd rule; a centre exactly on a left or top edge is inside, on a right or bottom edge
outside, so polygons sharing an edge neither overlap nor leave a gap). Filling is a vectorised
scanline over the polygons' edges (numpy), one pass per label. Polygons are burned in label-map
order (later entries win; value 0 erases, i.e. makes holes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from wsipipe.annotations.labels import LabelMap, default_label_map, parse_label_map
from wsipipe.annotations.model import AnnotationSet
from wsipipe.errors import AnnotationError

log = logging.getLogger("wsipipe.annotations")

STRIP_ROWS = 1024


class TileRasteriser:
    """Label masks of level-0 regions from one AnnotationSet and LabelMap.

    Picklable: it pickles as its polygons, their priorities and the label map, and rebuilds the index in the receiving
    process, so tiler worker processes can each hold one.
    """

    def __init__(
        self, annotations: AnnotationSet, label_map: LabelMap | str | dict | None = None, strict: bool = False
    ):
        """``strict``: refuse (``AnnotationError``) a label map that no area annotation matches,
        which would burn an all-zero mask."""
        self.label_map = default_label_map(annotations.labels) if label_map is None else parse_label_map(label_map)
        parts: list[tuple[int, int, Polygon]] = []
        unmapped: dict[str, int] = {}
        for order, ann in enumerate(annotations):
            if not isinstance(ann.geometry, (Polygon, MultiPolygon)):
                continue  # points have no area
            priority = self.label_map.priority(ann.label, annotations.ancestors(ann.label))
            if priority is None:
                unmapped[ann.label] = unmapped.get(ann.label, 0) + 1
                continue
            for polygon in getattr(ann.geometry, "geoms", [ann.geometry]):
                parts.append((priority, order, polygon))
        listed = ", ".join(f"{label or '(unclassified)'!r} x{n}" for label, n in unmapped.items())
        if strict and not parts:
            found = f"its area annotations are labelled {listed}" if unmapped else "it holds no area annotations"
            raise AnnotationError(
                f"{annotations.source}: no annotation matches the label map {self.label_map} ({found}); "
                "the mask would be empty"
            )
        if unmapped:
            log.warning("labels not in the label map %s are left out of masks: %s", self.label_map, listed)
        parts.sort(key=lambda part: part[:2])
        polygons = np.empty(len(parts), dtype=object)
        polygons[:] = [g for _, _, g in parts]
        self._build(polygons, np.array([p for p, _, _ in parts], np.int64))

    def _build(self, polygons: np.ndarray, priorities: np.ndarray) -> None:
        """Index the polygons (in burn order) and flatten their rings into one edge table."""
        polygons = shapely.orient_polygons(polygons)  # exteriors one way, holes the other: winding fill
        self._polygons = polygons
        self._priorities = priorities
        rings, ring_owner = shapely.get_rings(polygons, return_index=True)  # exterior, then holes
        self._xy, vertex_ring = shapely.get_coordinates(rings, return_index=True)
        ring_sizes = np.bincount(vertex_ring, minlength=len(rings))
        ring_starts = np.cumsum(ring_sizes) - ring_sizes
        # An edge goes from vertex i to i+1 within a closed ring; it is named by i.
        edges_per_ring = np.maximum(ring_sizes - 1, 0)
        self._edge_from = _ranges(ring_starts, edges_per_ring)
        self._edge_count = np.bincount(ring_owner, weights=edges_per_ring, minlength=len(polygons)).astype(np.int64)
        self._edge_start = np.cumsum(self._edge_count) - self._edge_count
        self._tree = shapely.STRtree(polygons)

    def __reduce__(self):
        return (_rebuild, (self.label_map, self._polygons, self._priorities))

    def __len__(self) -> int:
        return len(self._polygons)

    def region_mask(
        self, x0: float, y0: float, width: float, height: float, out_width: int, out_height: int
    ) -> np.ndarray:
        """uint8 (out_height, out_width) mask of level-0 ``[x0, x0+width) x [y0, y0+height)``."""
        mask = np.zeros((out_height, out_width), np.uint8)
        hits = self._tree.query(shapely.box(x0, y0, x0 + width, y0 + height))
        if not len(hits):
            return mask
        hits.sort()
        priorities = self._priorities[hits]
        breaks = np.flatnonzero(np.diff(priorities)) + 1
        scale = (out_width / width, out_height / height)
        for group in np.split(hits, breaks):
            inside = self._fill(group, x0, y0, scale, out_width, out_height)
            mask[inside] = self.label_map.values[self._priorities[group[0]]]
        return mask

    def _fill(self, polygons: np.ndarray, x0: float, y0: float, scale, out_width: int, out_height: int) -> np.ndarray:
        """Boolean (h, w): pixel centres inside any of ``polygons``.

        Non-zero winding: rings are oriented alike (exteriors one way, holes the other), each edge
        adds its direction (+-1) where it crosses a pixel row, and a running sum along the row is
        the winding number. No sorting of crossings is needed, and overlapping polygons of one
        label simply add up.
        """
        edges = self._edge_from[_ranges(self._edge_start[polygons], self._edge_count[polygons])]
        # Pixel-centre coordinates: pixel (r, c) has its centre at (c, r).
        ax = (self._xy[edges, 0] - x0) * scale[0] - 0.5
        ay = (self._xy[edges, 1] - y0) * scale[1] - 0.5
        bx = (self._xy[edges + 1, 0] - x0) * scale[0] - 0.5
        by = (self._xy[edges + 1, 1] - y0) * scale[1] - 0.5
        # Rows r with min(ay, by) <= r < max(ay, by) cross the edge (half-open: vertices count once).
        first = np.clip(np.ceil(np.minimum(ay, by)), 0, out_height).astype(np.int64)
        stop = np.clip(np.ceil(np.maximum(ay, by)), 0, out_height).astype(np.int64)
        counts = np.maximum(stop - first, 0)
        which = np.repeat(np.arange(len(edges)), counts)
        rows = _ranges(first, counts)
        t = (rows - ay[which]) / (by[which] - ay[which])
        xs = ax[which] + t * (bx[which] - ax[which])
        # A pixel is right of a crossing when its centre is at or beyond it: [ceil(x), ...).
        cols = np.clip(np.ceil(xs), 0, out_width).astype(np.int64)
        direction = np.where(by > ay, 1.0, -1.0)[which]
        width1 = out_width + 1
        winding = np.bincount(rows * width1 + cols, weights=direction, minlength=out_height * width1)
        return np.cumsum(winding.reshape(out_height, width1), axis=1)[:, :out_width] != 0

    def tile_mask(self, x0: float, y0: float, extent: float, out_size: int) -> np.ndarray:
        """uint8 (out_size, out_size) mask of the level-0 square ``[x0, x0+extent) x [y0, y0+extent)``."""
        return self.region_mask(x0, y0, extent, extent, out_size, out_size)

    def label_fractions(self, mask: np.ndarray) -> np.ndarray:
        """float32 fraction of ``mask`` pixels holding each value, ordered as ``label_map.values``."""
        counts = np.bincount(mask.ravel(), minlength=256)
        return (counts[list(self.label_map.values)] / max(mask.size, 1)).astype(np.float32)

    def slide_mask(
        self,
        width: int,
        height: int,
        out_width: int,
        out_height: int,
        on_rows: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """The whole ``width`` x ``height`` slide as an (out_height, out_width) mask, in strips."""
        mask = np.zeros((out_height, out_width), np.uint8)
        row_height = height / out_height
        for top in range(0, out_height, STRIP_ROWS):
            rows = min(STRIP_ROWS, out_height - top)
            mask[top : top + rows] = self.region_mask(0, top * row_height, width, rows * row_height, out_width, rows)
            if on_rows:
                on_rows(rows)
        return mask


def _rebuild(label_map: LabelMap, polygons: np.ndarray, priorities: np.ndarray) -> TileRasteriser:
    rasteriser = TileRasteriser.__new__(TileRasteriser)
    rasteriser.label_map = label_map
    rasteriser._build(polygons, priorities)
    return rasteriser


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + n)`` for each start s and count n."""
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(counts) - counts
    return np.repeat(np.asarray(starts, np.int64) - offsets, counts) + np.arange(total)
