"""The in-memory annotation model every reader produces and every writer and rasteriser consumes.

Geometries are shapely objects in level-0 pixel coordinates. Validation lives here, once, so the
three readers treat a bad shape the same way: in strict mode it is an ``AnnotationError``,
otherwise the shape is repaired or skipped and a warning names the file, line and problem.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import shapely
from shapely.geometry import MultiPoint, MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from wsipipe.errors import AnnotationError

log = logging.getLogger("wsipipe.annotations")

ANNOTATION = "annotation"
DETECTION = "detection"


@dataclass
class Annotation:
    """One drawn object.

    ``label`` is the class used for masks (ASAP PartOfGroup, QuPath classification, Aperio layer
    name); ``group`` is the parent of that class in ASAP's group tree, if any; ``kind`` is
    QuPath's objectType (annotation or detection); ``shape`` is the type the source file gave
    (ASAP Polygon, Rectangle, Spline, Dot, PointSet) so writers can restore it.
    """

    geometry: BaseGeometry
    label: str
    group: str | None = None
    color: str | None = None  # "#RRGGBB"
    kind: str = ANNOTATION
    name: str | None = None
    shape: str | None = None


@dataclass
class Group:
    """An ASAP annotation group (a class): its colour and parent group."""

    name: str
    color: str | None = None
    parent: str | None = None


@dataclass
class AnnotationSet:
    """The annotations of one file, in file order, with the groups and µm/px it declared."""

    annotations: list[Annotation] = field(default_factory=list)
    groups: dict[str, Group] = field(default_factory=dict)
    mpp: float | None = None
    source: str | None = None
    format: str | None = None

    def __len__(self) -> int:
        return len(self.annotations)

    def __iter__(self):
        return iter(self.annotations)

    def __getitem__(self, index):
        return self.annotations[index]

    def append(self, annotation: Annotation) -> None:
        self.annotations.append(annotation)

    @property
    def labels(self) -> list[str]:
        """Distinct labels in order of first appearance."""
        return list(dict.fromkeys(a.label for a in self.annotations))

    def ancestors(self, label: str) -> list[str]:
        """The label's parent groups, nearest first (ASAP group tree); cycles are cut."""
        chain: list[str] = []
        current = self.groups.get(label)
        while current is not None and current.parent and current.parent not in chain:
            chain.append(current.parent)
            current = self.groups.get(current.parent)
        return chain

    def clip_to(self, width: float, height: float, strict: bool = False) -> None:
        """Clip every geometry to the slide ``[0, width) x [0, height)``, warning for each one cut.

        Objects wholly outside are dropped with a warning; in strict mode either is an error.
        """
        bounds = shapely.box(0, 0, width, height)
        kept: list[Annotation] = []
        for index, ann in enumerate(self.annotations):
            if bounds.contains(ann.geometry):
                kept.append(ann)
                continue
            what = (
                f"{self.source}: annotation {describe(ann, index)} lies partly or wholly outside "
                f"the slide ({width:g} x {height:g} px)"
            )
            if strict:
                raise AnnotationError(what)
            clipped = _same_dimension(ann.geometry.intersection(bounds), ann.geometry)
            if clipped is None:
                log.warning("%s; it is entirely outside and was skipped", what)
                continue
            log.warning("%s; clipped to the slide", what)
            ann.geometry = clipped
            kept.append(ann)
        self.annotations = kept


def describe(ann: Annotation, index: int) -> str:
    return repr(ann.name) if ann.name else f"#{index}"


def _same_dimension(geom: BaseGeometry, like: BaseGeometry) -> BaseGeometry | None:
    """The parts of ``geom`` of ``like``'s dimension (areas stay areas), or None when empty."""
    if geom.is_empty:
        return None
    if isinstance(like, (Polygon, MultiPolygon)):
        parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, (Polygon, MultiPolygon))]
        polys = [p for g in parts for p in getattr(g, "geoms", [g]) if not p.is_empty]
        if not polys:
            return None
        return polys[0] if len(polys) == 1 else MultiPolygon(polys)
    parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, (Point, MultiPoint))]
    points = [p for g in parts for p in getattr(g, "geoms", [g])]
    if not points:
        return None
    return points[0] if len(points) == 1 else MultiPoint(points)


class Problems:
    """Turns a bad object into an error (strict) or a warning that says it was skipped or repaired.

    The first ``SHOWN`` warnings of each kind are logged one by one; ``finish`` logs how many
    more there were, so a file with thousands of repaired shapes does not flood the terminal.
    """

    SHOWN = 10

    def __init__(self, source: str, strict: bool):
        self.source = source
        self.strict = strict
        self.skipped = 0
        self.repairs = 0

    def where(self, line: int | None) -> str:
        return f"{self.source}:{line}" if line else self.source

    def bad(self, line: int | None, what: str) -> None:
        message = f"{self.where(line)}: {what}"
        if self.strict:
            raise AnnotationError(message)
        self.skipped += 1
        if self.skipped <= self.SHOWN:
            log.warning("%s; skipped", message)

    def repaired(self, line: int | None, what: str, repair: str) -> None:
        """``what`` is wrong and was mended by ``repair`` (said in the warning; strict mends nothing)."""
        if self.strict:
            raise AnnotationError(f"{self.where(line)}: {what} (refused by {{strict}})", parameter="strict")
        self.repairs += 1
        if self.repairs <= self.SHOWN:
            log.warning("%s: %s; %s", self.where(line), what, repair)

    def finish(self) -> None:
        if self.skipped > self.SHOWN:
            log.warning(
                "%s: %d more annotations skipped (%d in all)", self.source, self.skipped - self.SHOWN, self.skipped
            )
        if self.repairs > self.SHOWN:
            log.warning(
                "%s: %d more annotations repaired (%d in all)", self.source, self.repairs - self.SHOWN, self.repairs
            )


def _distinct(ring: np.ndarray) -> int:
    return len(np.unique(ring, axis=0))


def make_polygon(rings: list, problems: Problems, line: int | None, what: str) -> Polygon | MultiPolygon | None:
    """A valid polygon from an exterior ring and holes, or None (after a warning) when hopeless.

    Rings are (n, 2) arrays or lists of (x, y). Self-intersections are repaired with
    ``make_valid`` (the result may be a MultiPolygon), and the repair is reported.
    """
    rings = [np.asarray(ring, dtype=float).reshape(-1, 2) for ring in rings]
    if not rings or not len(rings[0]):
        problems.bad(line, f"{what} has no coordinates")
        return None
    if not all(np.isfinite(ring).all() for ring in rings):
        problems.bad(line, f"{what} has a NaN or infinite coordinate")
        return None
    exterior = rings[0]
    if len(exterior) < 3 or (len(exterior) < 5 and _distinct(exterior) < 3):
        problems.bad(line, f"{what} has {_distinct(exterior)} distinct points; a polygon needs at least 3")
        return None
    holes = [h for h in rings[1:] if len(h) >= 3 and _distinct(h) >= 3]
    if len(holes) < len(rings) - 1:
        problems.repaired(line, f"{what} has a hole with fewer than 3 points", "the hole was dropped")
    polygon = Polygon(exterior, holes) if holes else shapely.polygons(exterior)
    if shapely.is_valid(polygon):
        return polygon
    if _distinct(exterior) < 3:
        problems.bad(line, f"{what} has {_distinct(exterior)} distinct points; a polygon needs at least 3")
        return None
    reason = shapely.is_valid_reason(polygon)
    repaired = _same_dimension(shapely.make_valid(polygon), polygon)
    if repaired is None or repaired.area == 0:
        problems.bad(line, f"{what} is invalid ({reason}) and has no area once repaired")
        return None
    problems.repaired(line, f"{what} is invalid ({reason})", "repaired with make_valid")
    return repaired


def make_polygons(exteriors: list[np.ndarray], problems: Problems, lines: list, whats: list) -> list:
    """``make_polygon`` for many hole-free rings at once: valid ones are built in one vectorised
    call, the rest go through ``make_polygon`` one by one (which reports them)."""
    result: list = [None] * len(exteriors)
    sizes = np.array([len(ring) for ring in exteriors], np.int64)
    simple = np.flatnonzero(sizes >= 3)
    simple = simple[[bool(np.isfinite(exteriors[i]).all()) for i in simple]] if len(simple) else simple
    if len(simple):
        coords = np.concatenate([exteriors[i] for i in simple])
        rings = shapely.linearrings(coords, indices=np.repeat(np.arange(len(simple)), sizes[simple]))
        polygons = shapely.polygons(rings)
        valid = shapely.is_valid(polygons)
        for index, polygon in zip(simple[valid], polygons[valid]):
            result[index] = polygon
    for index, ring in enumerate(exteriors):
        if result[index] is None:
            result[index] = make_polygon([ring], problems, lines[index], whats[index])
    return result


def make_points(coords, problems: Problems, line: int | None, what: str) -> Point | MultiPoint | None:
    """A point (one coordinate) or a multipoint, or None (after a warning) when unusable."""
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    if not len(coords):
        problems.bad(line, f"{what} has no coordinates")
        return None
    if not np.isfinite(coords).all():
        problems.bad(line, f"{what} has a NaN or infinite coordinate")
        return None
    return Point(coords[0]) if len(coords) == 1 else MultiPoint(coords)


def hex_color(value) -> str | None:
    """'#RRGGBB' from '#rrggbb', 'rrggbb', [r, g, b] or None; anything else is None."""
    if isinstance(value, str):
        return _hex_text(value)
    if isinstance(value, (list, tuple)) and len(value) >= 3:
        try:
            r, g, b = (max(0, min(255, int(v))) for v in value[:3])
        except (TypeError, ValueError):
            return None
        return f"#{r:02X}{g:02X}{b:02X}"
    return None


@lru_cache(maxsize=1024)
def _hex_text(value: str) -> str | None:
    text = value.strip().lstrip("#")
    if len(text) == 6 and all(c in "0123456789abcdefABCDEF" for c in text):
        return f"#{text.upper()}"
    return None


def rgb(color: str | None) -> list[int] | None:
    if not color:
        return None
    text = color.lstrip("#")
    return [int(text[i : i + 2], 16) for i in (0, 2, 4)]
