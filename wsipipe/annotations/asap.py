"""ASAP XML (``<ASAP_Annotations>``), read by streaming and written incrementally.

Polygon, Rectangle and Spline become polygons (a spline keeps its control points), Dot becomes a
point and PointSet a multipoint. ASAP has no holes: a written polygon's holes become separate
polygons in the ``Exclusion`` group, which the default label map burns as 0 (holes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from lxml import etree
from shapely.geometry import MultiPoint, MultiPolygon, Point, Polygon

from wsipipe.annotations.model import (
    Annotation,
    AnnotationSet,
    Group,
    Problems,
    hex_color,
    make_points,
    make_polygons,
)
from wsipipe.annotations.xmlsafe import iter_xml, number, release

log = logging.getLogger("wsipipe.annotations")

AREA_TYPES = {"polygon": "Polygon", "rectangle": "Rectangle", "spline": "Spline"}
POINT_TYPES = {"dot": "Dot", "pointset": "PointSet"}
EXCLUSION_GROUP = "Exclusion"


def _group_name(value: str | None) -> str | None:
    return None if value in (None, "", "None") else value


BATCH = 4096  # polygons built and validated together


def read_asap(path: Path, strict: bool = False) -> AnnotationSet:
    problems = Problems(str(path), strict)
    result = AnnotationSet(source=str(path), format="asap")
    pending: list[tuple[Annotation, np.ndarray, int, str]] = []  # areas waiting for their polygon
    for _, elem in iter_xml(path, ("Annotation", "Group")):
        if elem.tag == "Group":
            name = elem.get("Name")
            if name:
                result.groups[name] = Group(name, hex_color(elem.get("Color")), _group_name(elem.get("PartOfGroup")))
        else:
            item = _read_annotation(elem, problems, len(result) + len(pending))
            if item is not None:
                if item[0].shape in AREA_TYPES.values():
                    pending.append(item)
                else:
                    _flush(pending, result, problems)
                    result.append(item[0])
            if len(pending) >= BATCH:
                _flush(pending, result, problems)
        release(elem)
    _flush(pending, result, problems)
    for ann in result:
        parents = result.ancestors(ann.label)
        ann.group = parents[0] if parents else None
    problems.finish()
    if not result.annotations and not problems.skipped:
        log.warning("%s: the file holds no ASAP <Annotation> elements, so no annotations", path)
    return result


def _flush(pending: list, result: AnnotationSet, problems: Problems) -> None:
    """Build the pending polygons (in file order) and append those that are usable."""
    if not pending:
        return
    geometries = make_polygons([p[1] for p in pending], problems, [p[2] for p in pending], [p[3] for p in pending])
    for (annotation, *_), geometry in zip(pending, geometries):
        if geometry is not None:
            annotation.geometry = geometry
            result.append(annotation)
    pending.clear()


def _read_annotation(elem, problems: Problems, index: int):
    """(annotation, coordinates, line, description); an area's geometry is set later in a batch."""
    line = elem.sourceline
    name = elem.get("Name") or f"Annotation {index}"
    raw_type = elem.get("Type") or ""
    what = f"annotation {name!r} ({raw_type or 'no Type'})"
    shape = AREA_TYPES.get(raw_type.lower()) or POINT_TYPES.get(raw_type.lower())
    if shape is None:
        problems.bad(line, f"{what} has an unknown Type; expected Polygon, Rectangle, Spline, Dot or PointSet")
        return None
    raw = [(c.get("Order"), c.get("X"), c.get("Y")) for c in elem.iter("Coordinate")]
    try:
        points = _points(raw)
    except ValueError as exc:
        problems.bad(line, f"{what} has a coordinate that is not a number ({exc})")
        return None
    annotation = Annotation(
        geometry=None,
        label=_group_name(elem.get("PartOfGroup")) or "",
        color=hex_color(elem.get("Color")),
        name=elem.get("Name"),
        shape=shape,
    )
    if shape in POINT_TYPES.values():
        annotation.geometry = make_points(points, problems, line, what)
        if annotation.geometry is None:
            return None
    return annotation, points, line, what


def _points(raw: list[tuple[str | None, str | None, str | None]]) -> np.ndarray:
    """(n, 2) coordinates from (Order, X, Y) attribute strings, sorted by Order when given."""
    try:
        xy = np.array([(x, y) for _, x, y in raw], dtype=float).reshape(-1, 2)
    except (TypeError, ValueError):
        xy = np.array([(_number(x), _number(y)) for _, x, y in raw], dtype=float).reshape(-1, 2)
    orders = [order for order, _, _ in raw]
    if None not in orders and orders != _IN_ORDER[: len(orders)]:
        keys = np.array([_number(order) for order in orders])
        xy = xy[np.argsort(keys, kind="stable")]
    return xy


_IN_ORDER = [str(i) for i in range(1024)]


def _number(text: str | None) -> float:
    try:
        return number(text)
    except ValueError:
        raise ValueError(f"{text!r}") from None


def write_asap(annotations: AnnotationSet, path: Path) -> None:
    """Write ASAP XML to ``path`` (the caller handles the temporary name)."""
    groups = dict(annotations.groups)
    holes, holed = 0, set()
    with etree.xmlfile(str(path), encoding="utf-8") as xf:
        xf.write_declaration()
        with xf.element("ASAP_Annotations"):
            xf.write("\n")
            with xf.element("Annotations"):
                xf.write("\n")
                for index, ann in enumerate(annotations):
                    for part_name, label, shape, coords, hole in _asap_parts(ann, index):
                        if hole:
                            holes += 1
                            holed.add(index)
                        if label and label not in groups:
                            color = ann.color if label == ann.label else "#000000"
                            groups[label] = Group(label, color, ann.group if label == ann.label else None)
                        attrs = {
                            "Name": part_name,
                            "Type": shape,
                            "PartOfGroup": label or "None",
                            "Color": ann.color or "#F4FA58",
                        }
                        el = etree.Element("Annotation", attrs)
                        coords_el = etree.SubElement(el, "Coordinates")
                        for order, (x, y) in enumerate(coords):
                            etree.SubElement(
                                coords_el, "Coordinate", Order=str(order), X=repr(float(x)), Y=repr(float(y))
                            )
                        xf.write(el, pretty_print=True)
            xf.write("\n")
            with xf.element("AnnotationGroups"):
                xf.write("\n")
                for group in groups.values():
                    el = etree.Element(
                        "Group",
                        Name=group.name,
                        PartOfGroup=group.parent or "None",
                        Color=group.color or "#000000",
                    )
                    etree.SubElement(el, "Attributes")
                    xf.write(el, pretty_print=True)
    if holes:  # a note, once per file: a tumour outline can have dozens of holes
        log.info(
            "%d hole%s of %d annotation%s written as polygons in group %r (ASAP has no holes)",
            holes,
            "" if holes == 1 else "s",
            len(holed),
            "" if len(holed) == 1 else "s",
            EXCLUSION_GROUP,
        )


def _asap_parts(ann: Annotation, index: int):
    """(name, group, ASAP type, coordinates, is a hole) for each ASAP annotation one object becomes."""
    name = ann.name or f"Annotation {index}"
    geom = ann.geometry
    if isinstance(geom, Point):
        yield name, ann.label, "Dot", [geom.coords[0]], False
    elif isinstance(geom, MultiPoint):
        yield name, ann.label, "PointSet", [p.coords[0] for p in geom.geoms], False
    elif isinstance(geom, (Polygon, MultiPolygon)):
        polygons = list(getattr(geom, "geoms", [geom]))
        shape = ann.shape if ann.shape in AREA_TYPES.values() else "Polygon"
        for k, polygon in enumerate(polygons):
            part = name if len(polygons) == 1 else f"{name} (part {k + 1})"
            yield part, ann.label, shape, list(polygon.exterior.coords)[:-1], False
            for h, hole in enumerate(polygon.interiors):
                yield f"{part} (hole {h + 1})", EXCLUSION_GROUP, "Polygon", list(hole.coords)[:-1], True
    else:
        log.warning("annotation %r is a %s, which ASAP cannot hold; not written", name, geom.geom_type)
