"""Burning annotations into label masks, one tile (or strip) at a time, through an STRtree.

Only the polygons whose boxes meet the requested region are drawn (``cv2.fillPoly`` in region
pixel coordinates, 8 fractional bits, holes by the even-odd rule), so the cost of a tile depends
on what lies in it, not on the size of the slide; no level-0 full-slide mask is ever made.

A mask pixel takes a polygon's value when the pixel's centre lies inside it (edges included).
Polygons are burned in label-map order (later entries win; value 0 erases, i.e. makes holes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import cv2
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from wsipipe.annotations.labels import LabelMap, default_label_map, parse_label_map
from wsipipe.annotations.model import AnnotationSet

log = logging.getLogger("wsipipe.annotations")

SHIFT = 8  # fractional bits of cv2.fillPoly coordinates
STRIP_ROWS = 1024


class TileRasteriser:
    """Label masks of level-0 regions from one AnnotationSet and LabelMap.

    Picklable: it pickles as its polygons and values, and rebuilds the index in the receiving
    process, so tiler worker processes can each hold one.
    """

    def __init__(self, annotations: AnnotationSet, label_map: LabelMap | str | dict | None = None):
        self.label_map = (
            default_label_map(annotations.labels) if label_map is None else parse_label_map(label_map)
        )
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
        if unmapped:
            listed = ", ".join(f"{label or '(unclassified)'!r} x{n}" for label, n in unmapped.items())
            log.warning("labels not in the label map %s are left out of masks: %s", self.label_map, listed)
        parts.sort(key=lambda part: part[:2])
        values = np.array([self.label_map.values[p] for p, _, _ in parts], np.uint8)
        self._build(np.array([g for _, _, g in parts], dtype=object), values)

    def _build(self, polygons: np.ndarray, values: np.ndarray) -> None:
        self._polygons = polygons  # in burn order
        self._values = values
        self._bounds = shapely.bounds(polygons) if len(polygons) else np.zeros((0, 4))
        self._rings = [_rings(p) for p in polygons]
        self._tree = shapely.STRtree(polygons)

    def __reduce__(self):
        return (_rebuild, (self.label_map, self._polygons, self._values))

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
        origin = np.array([x0, y0])
        scale = np.array([out_width / width, out_height / height]) * (1 << SHIFT)
        half = 0.5 * (1 << SHIFT)
        # Polygons reaching far beyond the region are cut to a margin first (int32 coordinates).
        near = (x0 - width, y0 - height, x0 + 2 * width, y0 + 2 * height)
        bounds = self._bounds[hits]
        far = (bounds[:, 0] < near[0]) | (bounds[:, 1] < near[1]) | (bounds[:, 2] > near[2]) | (bounds[:, 3] > near[3])
        for index, is_far in zip(hits, far):
            rings_list = [self._rings[index]]
            if is_far:
                cut = shapely.clip_by_rect(self._polygons[index], *near)
                rings_list = [_rings(p) for p in _polygons_of(cut)]
            for rings in rings_list:
                points = [np.round((ring - origin) * scale - half).astype(np.int32) for ring in rings]
                cv2.fillPoly(mask, points, int(self._values[index]), lineType=cv2.LINE_8, shift=SHIFT)
        return mask

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


def _rebuild(label_map: LabelMap, polygons: np.ndarray, values: np.ndarray) -> TileRasteriser:
    rasteriser = TileRasteriser.__new__(TileRasteriser)
    rasteriser.label_map = label_map
    rasteriser._build(polygons, values)
    return rasteriser


def _rings(polygon: Polygon) -> list[np.ndarray]:
    return [np.asarray(polygon.exterior.coords)[:, :2]] + [np.asarray(r.coords)[:, :2] for r in polygon.interiors]


def _polygons_of(geometry) -> list[Polygon]:
    if isinstance(geometry, Polygon):
        return [] if geometry.is_empty else [geometry]
    return [p for g in getattr(geometry, "geoms", []) for p in _polygons_of(g)]
