"""GeoJSON as QuPath exports and imports it.

A FeatureCollection, a bare list of Features or one Feature; Polygon and MultiPolygon (with
holes), Point and MultiPoint; ``properties.classification.name`` (or, as older QuPath versions
wrote it, ``classification`` as a plain string) is the label and its ``color``
(or QuPath 0.2's ``colorRGB``) the colour, ``properties.color`` an object's own colour,
``objectType`` annotation or detection. ASAP groups travel in a ``wsipipeGroups`` member (which
QuPath ignores) and the ASAP shape type in ``properties.metadata.ASAP_Type``, so ASAP -> GeoJSON
-> ASAP loses nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from shapely.geometry import MultiPolygon, mapping

from wsipipe.annotations.model import (
    ANNOTATION,
    DETECTION,
    Annotation,
    AnnotationSet,
    Group,
    Problems,
    hex_color,
    make_points,
    make_polygon,
    rgb,
)
from wsipipe.errors import AnnotationError

log = logging.getLogger("wsipipe.annotations")

GROUPS_MEMBER = "wsipipeGroups"
DETECTION_TYPES = {"detection", "cell", "tile"}


def read_geojson(path: Path, text: str, strict: bool = False) -> AnnotationSet:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from None
    problems = Problems(str(path), strict)
    result = AnnotationSet(source=str(path), format="geojson")
    features: Any  # checked where it is read
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        for group in data.get(GROUPS_MEMBER) or []:
            if isinstance(group, dict) and group.get("name"):
                result.groups[group["name"]] = Group(group["name"], hex_color(group.get("color")), group.get("parent"))
        mpp = data.get("micronsPerPixel")
        result.mpp = float(mpp) if isinstance(mpp, (int, float)) and mpp > 0 else None
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        found = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise AnnotationError(
            f"{path}: not GeoJSON annotations: expected a FeatureCollection, a Feature or a list of "
            f"Features, found {found!r}"
        )
    if not isinstance(features, list):
        raise AnnotationError(f"{path}: 'features' is not a list")
    for index, feature in enumerate(features):
        annotation = _read_feature(feature, index, problems)
        if annotation is not None:
            result.append(annotation)
    problems.finish()
    if not result.annotations and not problems.skipped:
        log.warning("%s: the file holds no Features, so no annotations", path)
    return result


def _read_feature(feature, index: int, problems: Problems) -> Annotation | None:
    what = f"feature #{index}"
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        problems.bad(None, f"{what} is not a GeoJSON Feature")
        return None
    properties = feature.get("properties") or {}
    geometry = feature.get("geometry") or {}
    if not isinstance(properties, dict) or not isinstance(geometry, dict):
        problems.bad(None, f"{what} has malformed 'properties' or 'geometry'")
        return None
    name = properties.get("name") if isinstance(properties.get("name"), str) else None
    if name:
        what += f" ({name!r})"
    geom_type = geometry.get("type")
    coordinates: Any = geometry.get("coordinates")  # malformed ones: the except below
    try:
        if geom_type == "Polygon":
            shape = make_polygon(_rings(coordinates), problems, None, what)
        elif geom_type == "MultiPolygon":
            parts = [make_polygon(_rings(p), problems, None, f"{what} part {k}") for k, p in enumerate(coordinates)]
            polygons = [q for p in parts if p is not None for q in getattr(p, "geoms", [p])]
            if not polygons:  # each bad part was reported (and skipped) on its own
                return None
            shape = polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)
            if not shape.is_valid:
                problems.repaired(None, f"{what} has overlapping parts", "they were merged")
                shape = shape.buffer(0)
        elif geom_type == "Point":
            shape = make_points([_xy(coordinates)], problems, None, what)
        elif geom_type == "MultiPoint":
            shape = make_points([_xy(c) for c in coordinates], problems, None, what)
        else:
            problems.bad(
                None,
                f"{what} has geometry type {geom_type!r}; only Polygon, MultiPolygon, Point and MultiPoint are read",
            )
            return None
    except (TypeError, ValueError, IndexError):
        problems.bad(None, f"{what} has malformed coordinates for a {geom_type}")
        return None
    if shape is None:
        return None
    classification = properties.get("classification") or {}
    if isinstance(classification, str):  # older QuPath exports: the class name alone
        classification = {"name": classification}
    elif not isinstance(classification, dict):
        problems.repaired(
            None, f"{what} has a 'classification' that is neither an object nor a name", "it is read as unclassified"
        )
        classification = {}
    class_color = hex_color(classification.get("color")) or _argb(classification.get("colorRGB"))
    metadata = properties.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    object_type = str(properties.get("objectType") or feature.get("id") or ANNOTATION).lower()
    return Annotation(
        geometry=shape,
        label=str(classification.get("name") or ""),
        group=metadata.get("group") or None,
        color=hex_color(properties.get("color")) or class_color,
        kind=DETECTION if object_type in DETECTION_TYPES or "detection" in object_type else ANNOTATION,
        name=name,
        shape=metadata.get("ASAP_Type") or None,
    )


def _xy(value) -> tuple[float, float]:
    x, y = value[0], value[1]
    if isinstance(x, bool) or isinstance(y, bool) or not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
        raise TypeError("coordinate is not a number")
    return float(x), float(y)


def _rings(value) -> list[list[tuple[float, float]]]:
    return [[_xy(c) for c in ring] for ring in value]


def _argb(value) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    value &= 0xFFFFFF
    return f"#{value >> 16:02X}{(value >> 8) & 0xFF:02X}{value & 0xFF:02X}"


def write_geojson(annotations: AnnotationSet, path: Path) -> None:
    """Write a QuPath-compatible FeatureCollection to ``path`` (the caller handles the temp name)."""
    groups = annotations.groups
    with open(path, "w", encoding="utf-8") as out:
        out.write('{"type": "FeatureCollection"')
        if annotations.mpp:
            out.write(f', "micronsPerPixel": {json.dumps(annotations.mpp)}')
        if groups:
            members = [{"name": g.name, "color": g.color, "parent": g.parent} for g in groups.values()]
            out.write(f', "{GROUPS_MEMBER}": {json.dumps(members)}')
        out.write(', "features": [')
        for index, ann in enumerate(annotations):
            out.write(",\n" if index else "\n")
            out.write(json.dumps(_feature(ann, groups)))
        out.write("\n]}\n")


def _feature(ann: Annotation, groups: dict[str, Group]) -> dict:
    properties: dict = {"objectType": ann.kind}
    if ann.name:
        properties["name"] = ann.name
    if ann.label:
        group = groups.get(ann.label)
        class_color = (group.color if group and group.color else None) or ann.color
        properties["classification"] = {"name": ann.label}
        if class_color:
            properties["classification"]["color"] = rgb(class_color)
    if ann.color:
        properties["color"] = rgb(ann.color)
    metadata = {}
    if ann.shape:
        metadata["ASAP_Type"] = ann.shape
    if ann.group:
        metadata["group"] = ann.group
    if metadata:
        properties["metadata"] = metadata
    return {"type": "Feature", "geometry": mapping(ann.geometry), "properties": properties}
