"""Label map -> polygons per class, in level-0 pixel coordinates.

Outlines are traced at the 0.5 iso-line of each class mask (marching squares), so a region's
outline runs along its pixel edges with only the corners cut, and its area matches the pixel
count to within half a pixel per corner. Holes are kept (islands inside holes become separate
polygons), regions and holes smaller than ``min_area_um2`` are dropped (a dropped hole is filled),
and outlines are simplified (Douglas-Peucker, topology kept) to ``simplify_um``. With ``clip``,
every polygon is cut to that rectangle (the slide: a label map's last pixels overhang its far
edges); every polygon returned is valid (OGC) with at least four positions per ring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsipipe.errors import InvalidInputError


@dataclass(frozen=True)
class RegionOptions:
    """What the region extraction keeps; recorded in the report."""

    min_area_um2: float = 1000.0
    #: Simplification tolerance in µm; None = one label-map pixel.
    simplify_um: float | None = None


def label_map_to_polygons(
    labels: np.ndarray,
    *,
    downsample: float,
    mpp: float,
    class_ids: list[int] | None = None,
    options: RegionOptions = RegionOptions(),
    origin: tuple[float, float] = (0.0, 0.0),
    clip: tuple[float, float, float, float] | None = None,
) -> dict[int, list]:
    """Shapely polygons for each class of ``labels`` (2-D ints), largest first.

    ``downsample``: level-0 pixels per label-map pixel; ``mpp``: level-0 µm/px; ``origin``: the
    level-0 position of the label map's top-left corner; ``clip``: (x0, y0, x1, y1) in level-0
    pixels to cut the polygons to. Class 0 is background unless listed in ``class_ids``.
    """
    from shapely import STRtree, box
    from shapely.geometry import Polygon
    from skimage.measure import find_contours

    if labels.ndim != 2:
        raise InvalidInputError(f"a label map must be 2-D, got shape {labels.shape}")
    if downsample <= 0 or mpp <= 0:
        raise InvalidInputError(f"downsample ({downsample}) and µm/px ({mpp}) must be positive")
    if class_ids is None:
        class_ids = [int(c) for c in np.unique(labels) if c != 0]
    px_area_um2 = (mpp * downsample) ** 2  # one label-map pixel
    min_area_px = options.min_area_um2 / px_area_um2
    simplify_um = options.simplify_um if options.simplify_um is not None else mpp * downsample
    simplify_level0 = simplify_um / mpp

    result: dict[int, list] = {}
    for class_id in class_ids:
        mask = np.pad(labels == class_id, 1).astype(np.float32)
        outers: list = []
        holes: list = []
        for contour in find_contours(mask, 0.5):
            if len(contour) < 4:
                continue
            ring = Polygon(contour[:, ::-1])  # (x, y) in padded label-map pixel centres
            if ring.area < min_area_px:
                continue
            # Marching squares walks foreground outlines one way and hole outlines the other.
            (outers if ring.exterior.is_ccw else holes).append(ring)
        polygons = _assemble(outers, holes, STRtree)
        scale = float(downsample)
        shift_x = origin[0] + (0.5 - 1) * scale  # pixel centre i + 0.5; undo the padding
        shift_y = origin[1] + (0.5 - 1) * scale
        placed = []
        for polygon in polygons:
            level0 = _affine(polygon, scale, shift_x, shift_y).simplify(simplify_level0, preserve_topology=True)
            if clip is not None:
                level0 = level0.intersection(box(*clip))
            placed += valid_polygons(level0)
        result[class_id] = sorted(placed, key=lambda p: -p.area)
    return result


def valid_polygons(geometry) -> list:
    """The polygons of ``geometry`` that have an area, each valid (``make_valid`` where needed)."""
    from shapely import make_valid
    from shapely.geometry import Polygon

    if not geometry.is_valid:
        geometry = make_valid(geometry)
    parts = getattr(geometry, "geoms", [geometry])
    found = []
    for part in parts:
        if isinstance(part, Polygon):
            if part.area > 0:
                found.append(part)
        elif hasattr(part, "geoms"):
            found += valid_polygons(part)
    return found


def _assemble(outers: list, holes: list, strtree_cls) -> list:
    """Each hole goes to the smallest outline that contains it."""
    from shapely.geometry import Polygon

    interiors: list[list] = [[] for _ in outers]
    if outers and holes:
        tree = strtree_cls(outers)
        for hole in holes:
            candidates = [int(i) for i in tree.query(hole, predicate="within")]
            if candidates:
                owner = min(candidates, key=lambda i: outers[i].area)
                interiors[owner].append(hole.exterior.coords)
    return [Polygon(outer.exterior.coords, inner) for outer, inner in zip(outers, interiors)]


def _affine(polygon, scale: float, shift_x: float, shift_y: float):
    from shapely import affinity

    return affinity.affine_transform(polygon, [scale, 0, 0, scale, shift_x, shift_y])
