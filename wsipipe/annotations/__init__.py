"""Annotations: ASAP XML, Aperio ImageScope XML and QuPath GeoJSON in and out, and label masks.

``read_annotations`` gives an ``AnnotationSet`` (shapely geometries in level-0 pixels with
label, group, colour and kind); ``write_annotations`` writes GeoJSON or ASAP XML;
``TileRasteriser`` burns the set into per-tile (or whole-slide) uint8 label masks through an
STRtree, following a ``LabelMap`` from ``parse_label_map``.
"""

from wsipipe.annotations.io import detect_format, read_annotations, write_annotations
from wsipipe.annotations.labels import LabelMap, default_label_map, parse_label_map
from wsipipe.annotations.model import Annotation, AnnotationSet, Group
from wsipipe.annotations.rasterise import TileRasteriser

__all__ = [
    "Annotation",
    "AnnotationSet",
    "Group",
    "LabelMap",
    "TileRasteriser",
    "default_label_map",
    "detect_format",
    "parse_label_map",
    "read_annotations",
    "write_annotations",
]
