"""Real MoNuSeg Aperio files (counts and masks against independent references) and round trips."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image

from wsipipe.annotations import TileRasteriser, read_annotations, write_annotations
from wsipipe.annotations.model import Annotation, AnnotationSet, Group

RICH_ASAP = Path(__file__).parent / "data" / "asap_rich.xml"  # every ASAP type, groups, decimal commas


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def monuseg(monuseg_dir):
    """All 13 MoNuSeg images: (xml, annotations, warnings), read once."""
    files = sorted(monuseg_dir.glob("*.xml"))
    assert len(files) == 13
    logger = logging.getLogger("wsipipe.annotations")
    result = []
    for xml in files:
        collect = _Collect()
        logger.addHandler(collect)
        logger.propagate = False
        try:
            result.append((xml, read_annotations(xml), collect.messages))
        finally:
            logger.removeHandler(collect)
            logger.propagate = True
    return result


def test_every_region_is_one_nucleus(monuseg):
    """Regions counted by regex; the few with < 3 distinct vertices are skipped, each with a warning."""
    for xml, annotation_set, warnings in monuseg:
        text = xml.read_text()
        regions = re.findall(r'<Region Id="(\d+)"(.*?)</Region>', text, re.S)
        assert len(regions) == len(re.findall(r"<Region\s", text)) > 100
        degenerate = [
            rid for rid, body in regions if len(set(re.findall(r'<Vertex X="([^"]+)" Y="([^"]+)"', body))) < 3
        ]
        assert len(annotation_set) == len(regions) - len(degenerate), xml.name
        assert [a.name for a in annotation_set] == [f"Region {rid}" for rid, _ in regions if rid not in degenerate]
        for rid in degenerate:
            assert any(f"Region Id={rid} has" in w and "skipped" in w for w in warnings), (xml.name, rid)
        declared = re.search(r'<Annotations MicronsPerPixel="([^"]+)"', text)
        assert annotation_set.mpp == (float(declared.group(1)) if declared else None)
        assert all(a.geometry.is_valid and a.geometry.area > 0 for a in annotation_set)


@pytest.mark.slow
def test_masks_match_image_size_and_mark_every_nucleus(monuseg):
    for xml, annotation_set, _ in monuseg:
        width, height = Image.open(xml.with_suffix(".tif")).size
        assert (width, height) == (1000, 1000)
        mask = TileRasteriser(annotation_set).region_mask(0, 0, width, height, width, height)
        assert mask.shape == (height, width)
        # Independent reference: pixel centres inside the union of the nuclei, by shapely.
        union = shapely.union_all([a.geometry for a in annotation_set])
        ys, xs = np.mgrid[0:height, 0:width] + 0.5
        inside = shapely.contains_xy(union, xs, ys)
        differ = np.argwhere((mask > 0) != inside)
        # Only centres lying exactly on an outline may differ (the mask counts left/top edges in).
        assert np.allclose(shapely.distance(union, shapely.points(differ[:, 1] + 0.5, differ[:, 0] + 0.5)), 0)
        unmarked = 0
        for annotation in annotation_set:
            # Every pixel whose centre is inside this nucleus (off its outline) is marked ...
            x0, y0, x1, y1 = (int(v) for v in annotation.geometry.bounds)
            cols, rows = np.meshgrid(
                np.arange(max(x0, 0), min(x1 + 1, width)), np.arange(max(y0, 0), min(y1 + 1, height))
            )
            centres = shapely.points(cols + 0.5, rows + 0.5)
            interior = shapely.contains(annotation.geometry, centres)
            interior &= shapely.distance(annotation.geometry.boundary, centres) > 1e-9  # not a float tie
            assert np.all(mask[rows[interior], cols[interior]] == 1), (xml.name, annotation.name)
            # ... and the pixel under an interior point of it too, unless it is a sliver between centres.
            x, y = annotation.geometry.representative_point().coords[0]
            unmarked += mask[int(y), int(x)] == 0
        assert unmarked <= 0.01 * len(annotation_set), xml.name


def _assert_same(first: AnnotationSet, second: AnnotationSet, *, names=True) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.geometry.geom_type == b.geometry.geom_type
        assert abs(a.geometry.area - b.geometry.area) <= 1e-6
        va, vb = shapely.get_coordinates(a.geometry), shapely.get_coordinates(b.geometry)
        assert va.shape == vb.shape and np.abs(va - vb).max(initial=0) <= 1e-6
        assert (a.label, a.color, a.kind) == (b.label, b.color, b.kind)
        if names:
            assert a.name == b.name


def test_aperio_to_geojson_keeps_every_nucleus(monuseg, tmp_path):
    for xml, annotation_set, _ in monuseg[:4]:
        out = write_annotations(annotation_set, tmp_path / f"{xml.stem}.geojson")
        again = read_annotations(out)
        _assert_same(annotation_set, again)
        assert again.mpp == annotation_set.mpp


def test_camelyon_asap_to_geojson_to_asap(tmp_path, camelyon_xml):
    original = read_annotations(camelyon_xml)
    geojson = read_annotations(write_annotations(original, tmp_path / "c.geojson"))
    asap = read_annotations(write_annotations(geojson, tmp_path / "c.xml"))
    for copy in (geojson, asap):
        _assert_same(original, copy)
        assert copy.groups == original.groups
    assert [a.shape for a in asap] == [a.shape for a in original]


def test_rich_asap_round_trip_keeps_types_groups_points(tmp_path):
    original = read_annotations(RICH_ASAP)
    geojson = read_annotations(write_annotations(original, tmp_path / "rich.geojson"))
    asap = read_annotations(write_annotations(geojson, tmp_path / "back.xml", to="asap"))
    for copy in (geojson, asap):
        _assert_same(original, copy)
        assert [(a.shape, a.group) for a in copy] == [(a.shape, a.group) for a in original]
        assert copy.groups == original.groups


def test_geojson_holes_and_multipolygons_to_asap_use_the_exclusion_group(tmp_path, caplog):
    ring = shapely.Polygon([(0, 0), (30, 0), (30, 30), (0, 30)], [[(10, 10), (20, 10), (20, 20), (10, 20)]])
    annotations = AnnotationSet(
        [
            Annotation(ring, "Tumor", name="ring"),
            Annotation(
                shapely.MultiPolygon([shapely.box(40, 0, 50, 10), shapely.box(60, 0, 70, 10)]), "Tumor", name="two"
            ),
        ],
        groups={"Tumor": Group("Tumor", "#FF0000")},
    )
    with caplog.at_level(logging.INFO, logger="wsipipe.annotations"):
        asap = read_annotations(write_annotations(annotations, tmp_path / "holes.xml"))
    assert [(a.name, a.label) for a in asap] == [
        ("ring", "Tumor"),
        ("ring (hole 1)", "Exclusion"),
        ("two (part 1)", "Tumor"),
        ("two (part 2)", "Tumor"),
    ]
    assert [r.getMessage() for r in caplog.records] == [
        "1 hole of 1 annotation written as polygons in group 'Exclusion' (ASAP has no holes)"
    ]
    # The default label map burns Exclusion as 0, so the mask is the same as from the polygon with a hole.
    before = TileRasteriser(annotations).tile_mask(0, 0, 80, 80)
    after = TileRasteriser(asap).tile_mask(0, 0, 80, 80)
    assert np.array_equal(before > 0, after > 0) and (after > 0).sum() == 800 + 200
