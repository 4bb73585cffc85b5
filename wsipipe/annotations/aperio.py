"""Aperio ImageScope XML (``<Annotations MicronsPerPixel>``), read by streaming, one object per Region.

The label of a Region is its layer's (``<Annotation>``) Name, else its Description attribute,
else ``Annotation <Id>``; a Region marked ``NegativeROA="1"`` (a negative region of analysis) is
labelled ``Exclusion``. Rectangles are polygons; an ellipse (Type 2) is given by two corners and
becomes a 64-vertex polygon.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from wsipipe.annotations.model import Annotation, AnnotationSet, Problems, make_polygon
from wsipipe.annotations.xmlsafe import iter_xml, number, release

log = logging.getLogger("wsipipe.annotations")

ELLIPSE_TYPE = "2"
ELLIPSE_VERTICES = 64


def read_aperio(path: Path, strict: bool = False) -> AnnotationSet:
    problems = Problems(str(path), strict)
    result = AnnotationSet(source=str(path), format="aperio")
    layer = None  # lxml keeps one proxy per element while referenced
    layer_style: tuple[str, str | None] = ("", None)
    root_seen = False
    for _, elem in iter_xml(path, ("Region", "Annotation")):
        if not root_seen:
            root_seen = True
            mpp = elem.getroottree().getroot().get("MicronsPerPixel")
            try:
                result.mpp = number(mpp) if mpp else None
            except ValueError:
                log.warning("%s: MicronsPerPixel=%r is not a number; ignored", path, mpp)
            if result.mpp is not None and not (math.isfinite(result.mpp) and result.mpp > 0):
                log.warning("%s: MicronsPerPixel=%r is not a positive number; ignored", path, mpp)
                result.mpp = None
        if elem.tag == "Region":
            regions = elem.getparent()
            this_layer = regions.getparent() if regions is not None else None
            if this_layer is not layer:
                layer, layer_style = this_layer, _layer_label_and_color(this_layer)
            annotation = _read_region(elem, *layer_style, problems)
            if annotation is not None:
                result.append(annotation)
        else:
            layer = None
        release(elem)
    problems.finish()
    if not result.annotations and not problems.skipped:
        log.warning("%s: the file holds no Aperio <Region> elements, so no annotations", path)
    return result


def _layer_label_and_color(layer) -> tuple[str, str | None]:
    if layer is None or layer.tag != "Annotation":
        return "", None
    label = (layer.get("Name") or "").strip()
    if not label:
        for attr in layer.iterfind("Attributes/Attribute"):
            if attr.get("Name") == "Description" and (attr.get("Value") or "").strip():
                label = attr.get("Value").strip()
                break
    if not label:
        label = f"Annotation {layer.get('Id', '')}".strip()
    color = None
    try:
        colorref = int(layer.get("LineColor", ""))  # Windows COLORREF: 0x00BBGGRR
        color = f"#{colorref & 0xFF:02X}{(colorref >> 8) & 0xFF:02X}{(colorref >> 16) & 0xFF:02X}"
    except ValueError:
        pass
    return label, color


def _read_region(elem, label: str, color: str | None, problems: Problems) -> Annotation | None:
    line = elem.sourceline
    region_id = elem.get("Id", "?")
    what = f"Region Id={region_id}"
    vertices = []
    for vertex in elem.iterfind("Vertices/Vertex"):
        try:
            vertices.append((number(vertex.get("X")), number(vertex.get("Y"))))
        except ValueError:
            problems.bad(
                vertex.sourceline,
                f"{what} has a vertex that is not a number (X={vertex.get('X')!r} Y={vertex.get('Y')!r})",
            )
            return None
    if elem.get("Type") == ELLIPSE_TYPE and len(vertices) == 2:
        vertices = _ellipse(*vertices)
    geometry = make_polygon([vertices], problems, line, what)
    if geometry is None:
        return None
    if elem.get("NegativeROA") == "1":
        label = "Exclusion"
    return Annotation(geometry=geometry, label=label, color=color, name=f"Region {region_id}")


def _ellipse(corner_a, corner_b) -> list[tuple[float, float]]:
    cx, cy = (corner_a[0] + corner_b[0]) / 2, (corner_a[1] + corner_b[1]) / 2
    rx, ry = abs(corner_b[0] - corner_a[0]) / 2, abs(corner_b[1] - corner_a[1]) / 2
    return [
        (cx + rx * math.cos(2 * math.pi * k / ELLIPSE_VERTICES), cy + ry * math.sin(2 * math.pi * k / ELLIPSE_VERTICES))
        for k in range(ELLIPSE_VERTICES)
    ]
