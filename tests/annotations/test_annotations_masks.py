"""Masks: hand-made shapes against hand-computed pixel counts, label maps, tiles vs regions, pickling."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon

from wsipipe.annotations import (
    Annotation,
    AnnotationSet,
    Group,
    TileRasteriser,
    default_label_map,
    parse_label_map,
)
from wsipipe.errors import InvalidInputError


def _set(*items, groups=None) -> AnnotationSet:
    return AnnotationSet([Annotation(geometry, label) for geometry, label in items], groups=groups or {})


def test_square_at_full_and_half_scale():
    rasteriser = TileRasteriser(_set((shapely.box(10, 10, 20, 20), "A")))
    full = rasteriser.tile_mask(0, 0, 32, 32)
    assert full.dtype == np.uint8 and full.shape == (32, 32)
    expected = np.zeros((32, 32), np.uint8)
    expected[10:20, 10:20] = 1  # pixel centres 10.5 .. 19.5 are inside [10, 20)
    assert np.array_equal(full, expected)
    half = rasteriser.tile_mask(0, 0, 32, 16)  # 2 level-0 px per mask pixel: centres at 1, 3, 5, ...
    expected = np.zeros((16, 16), np.uint8)
    expected[5:10, 5:10] = 1  # centres 11 .. 19
    assert np.array_equal(half, expected)
    offset = rasteriser.tile_mask(15, 5, 16, 16)
    assert offset.sum() == 5 * 10 and offset[5:15, 0:5].all()


def test_polygon_with_a_hole_and_a_triangle():
    ring = Polygon([(0, 0), (30, 0), (30, 30), (0, 30)], [[(10, 10), (20, 10), (20, 20), (10, 20)]])
    mask = TileRasteriser(_set((ring, "A"))).tile_mask(0, 0, 32, 32)
    assert mask.sum() == 30 * 30 - 10 * 10 and mask[10:20, 10:20].sum() == 0
    # Right triangle with legs 10: centres (i+.5, j+.5) strictly below the hypotenuse i + j + 1 < 10;
    # centres on the hypotenuse (a right edge) are outside: 9 + 8 + ... + 1 = 45 pixels.
    triangle = TileRasteriser(_set((Polygon([(0, 0), (10, 0), (0, 10)]), "A"))).tile_mask(0, 0, 16, 16)
    assert triangle.sum() == 45
    assert all(triangle[j, i] == (i + j <= 8) for i in range(16) for j in range(16))


def test_shared_edges_neither_overlap_nor_leave_gaps():
    halves = _set((shapely.box(0, 0, 10.3, 20), "A"), (shapely.box(10.3, 0, 20, 20), "B"))
    mask = TileRasteriser(halves, "A=1,B=2").tile_mask(0, 0, 20, 20)
    assert np.count_nonzero(mask == 0) == 0
    assert np.count_nonzero(mask == 1) == 20 * 10 and np.count_nonzero(mask == 2) == 20 * 10


@pytest.mark.parametrize(
    "spec,count_a,count_b",
    [("A=1,B=2", 300, 400), ("B=2,A=1", 400, 300), ("A=1,B=0", 300, 0)],
)
def test_overlapping_labels_follow_label_map_order(spec, count_a, count_b):
    # A = [0,20)^2 (400 px), B = [10,30)^2 (400 px), overlap 100 px.
    two = _set((shapely.box(0, 0, 20, 20), "A"), (shapely.box(10, 10, 30, 30), "B"))
    rasteriser = TileRasteriser(two, spec)
    mask = rasteriser.tile_mask(0, 0, 32, 32)
    labels = parse_label_map(spec)
    value = dict(zip(labels.names, labels.values))
    assert np.count_nonzero(mask == value["A"]) == count_a
    if value["B"]:
        assert np.count_nonzero(mask == value["B"]) == count_b
    assert np.count_nonzero(mask) == count_a + count_b
    fractions = rasteriser.label_fractions(mask)
    expected = [np.count_nonzero(mask == v) / mask.size for v in labels.values]
    assert fractions.dtype == np.float32 and np.allclose(fractions, expected)


def test_exclusion_group_becomes_a_hole_with_the_default_map():
    # CAMELYON16 style: tumour in group _0, an exclusion drawn inside it in group _2.
    camelyon = _set((shapely.box(0, 0, 20, 20), "_0"), (shapely.box(5, 5, 10, 10), "_2"))
    labels = default_label_map(camelyon.labels)
    assert labels.to_dict() == {"_0": 1, "_2": 0}
    mask = TileRasteriser(camelyon).tile_mask(0, 0, 20, 20)
    assert mask.sum() == 400 - 25 and mask[5:10, 5:10].sum() == 0
    named = _set((shapely.box(5, 5, 10, 10), "Exclusion"), (shapely.box(0, 0, 20, 20), "Tumor"))
    assert TileRasteriser(named).label_map.to_dict() == {"Tumor": 1, "Exclusion": 0}
    assert TileRasteriser(named).tile_mask(0, 0, 20, 20).sum() == 375


def test_label_of_a_child_group_follows_its_parent_and_unmapped_labels_are_reported(caplog):
    groups = {"metastasis": Group("metastasis", parent="Tumor"), "Tumor": Group("Tumor")}
    annotations = _set((shapely.box(0, 0, 4, 4), "metastasis"), (shapely.box(8, 8, 10, 10), "Other"), groups=groups)
    rasteriser = TileRasteriser(annotations, "Tumor=3")
    mask = rasteriser.tile_mask(0, 0, 16, 16)
    assert np.count_nonzero(mask == 3) == 16 and np.count_nonzero(mask) == 16
    assert "'Other' x1" in caplog.text


def test_multipolygon_points_and_polygons_far_larger_than_the_tile():
    huge = Polygon([(-1e6, -1e6), (1e6, -1e6), (1e6, 1e6), (-1e6, 1e6)])
    parts = MultiPolygon([shapely.box(0, 0, 2, 2), shapely.box(4, 4, 6, 6)])
    annotations = _set((huge, "Big"), (parts, "Parts"), (shapely.Point(1, 1), "Dot"))
    rasteriser = TileRasteriser(annotations, "Big=1,Parts=2,Dot=3")
    mask = rasteriser.tile_mask(0, 0, 8, 8)
    assert np.count_nonzero(mask == 2) == 8 and np.count_nonzero(mask == 1) == 64 - 8
    assert np.all(rasteriser.tile_mask(90_000.5, -500_000, 1000, 10) == 1)


def test_tiles_assemble_into_the_region_mask_and_pickled_copies_agree():
    rng = np.random.default_rng(0)
    polygons = [shapely.Point(x, y).buffer(r, 8) for x, y, r in rng.uniform([0, 0, 3], [400, 400, 40], (60, 3))]
    annotations = _set(*[(p, "AB"[i % 2]) for i, p in enumerate(polygons)])
    rasteriser = TileRasteriser(annotations, "A=1,B=2")
    region = rasteriser.region_mask(0, 0, 512, 512, 128, 128)
    tiles = np.block([[rasteriser.tile_mask(x, y, 128, 32) for x in range(0, 512, 128)] for y in range(0, 512, 128)])
    assert np.array_equal(region, tiles) and region.any()
    copy = pickle.loads(pickle.dumps(rasteriser))
    assert np.array_equal(copy.tile_mask(37.5, 11.25, 200, 64), rasteriser.tile_mask(37.5, 11.25, 200, 64))
    strips = rasteriser.slide_mask(512, 512, 128, 128)
    assert np.array_equal(strips, region)


def test_empty_tile_and_empty_set():
    assert not TileRasteriser(_set((shapely.box(0, 0, 1, 1), "A"))).tile_mask(100, 100, 10, 10).any()
    empty = TileRasteriser(AnnotationSet(), "A=1")
    assert not empty.tile_mask(0, 0, 10, 10).any() and empty.label_fractions(np.zeros((4, 4), np.uint8))[0] == 0


def test_parse_label_map_forms_and_errors(tmp_path):
    assert parse_label_map("Tumor=1, Exclusion = 0").to_dict() == {"Tumor": 1, "Exclusion": 0}
    assert parse_label_map("Tumor=1").names == ("Tumor",)
    json_file = tmp_path / "labels.json"
    json_file.write_text(json.dumps({"Stroma": 1, "Tumor": 2, "_2": 0}))
    assert parse_label_map(str(json_file)).names == ("Stroma", "Tumor", "_2")
    lines = tmp_path / "labels.txt"
    lines.write_text("# name=value, priority order\nNormal tissue=1\nTumor=2  # wins\n\n")
    assert parse_label_map(lines).to_dict() == {"Normal tissue": 1, "Tumor": 2}
    for bad, message in [
        ("Tumor=x", "not an integer"),
        ("Tumor=300", "0-255"),
        ("Tumor=1,Tumor=2", "listed twice"),
        ("Tumor", "neither 'name=value"),
        ("=1", "not 'name=value'"),
        (str(tmp_path / "missing.json"), "neither 'name=value"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            parse_label_map(bad)
