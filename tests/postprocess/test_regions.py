"""Label map -> polygons: squares, holes, islands, blobs, specks, classes, scaling and simplification."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import Point

from wsipipe.errors import InvalidInputError
from wsipipe.postprocess.regions import RegionOptions, label_map_to_polygons

EXACT = RegionOptions(min_area_um2=0.0, simplify_um=1e-3)
CORNERS = 0.5  # the 0.5 iso-line cuts each square corner by a 0.5 x 0.5 / 2 triangle: 4 x 0.125 px


def test_square_lands_on_its_level0_pixel_edges():
    labels = np.zeros((40, 50), np.uint8)
    labels[5:15, 20:32] = 1  # 10 rows x 12 columns
    (square,) = label_map_to_polygons(labels, downsample=4, mpp=0.25, options=EXACT)[1]
    assert square.bounds == pytest.approx((80, 20, 128, 60))  # pixel edges x 4
    assert square.area == pytest.approx((120 - CORNERS) * 16)
    assert not square.interiors


def test_origin_shifts_the_polygons():
    labels = np.zeros((20, 20), np.uint8)
    labels[2:6, 2:6] = 1
    (square,) = label_map_to_polygons(labels, downsample=2, mpp=0.5, options=EXACT, origin=(1000, 500))[1]
    assert square.bounds == pytest.approx((1004, 504, 1012, 512))


def test_square_with_hole_keeps_the_hole_and_an_island_inside_it():
    labels = np.zeros((60, 60), np.uint8)
    labels[5:35, 5:35] = 1
    labels[15:25, 15:25] = 0
    labels[18:22, 18:22] = 1  # island in the hole
    ring, island = label_map_to_polygons(labels, downsample=1, mpp=1.0, options=EXACT)[1]
    assert len(ring.interiors) == 1
    assert ring.area == pytest.approx((900 - CORNERS) - (100 - CORNERS))
    assert not ring.contains(Point(20, 20)) and ring.contains(Point(10, 10))
    assert island.area == pytest.approx(16 - CORNERS) and island.within(ring.convex_hull)


def test_two_blobs_and_a_speck():
    labels = np.zeros((100, 100), np.uint8)
    labels[10:30, 10:30] = 1
    labels[50:90, 60:80] = 1
    labels[95:97, 2:4] = 1  # 2 x 2 px speck = 4 µm² at 1 µm/px
    regions = label_map_to_polygons(
        labels, downsample=1, mpp=1.0, options=RegionOptions(min_area_um2=50.0, simplify_um=1e-3)
    )[1]
    assert [round(p.area, 1) for p in regions] == [800 - CORNERS, 400 - CORNERS]  # largest first
    kept = label_map_to_polygons(labels, downsample=1, mpp=1.0, options=EXACT)[1]
    assert len(kept) == 3


def test_small_holes_are_filled():
    labels = np.zeros((40, 40), np.uint8)
    labels[5:35, 5:35] = 1
    labels[10, 10] = 0  # a one-pixel hole
    (region,) = label_map_to_polygons(labels, downsample=1, mpp=1.0, options=RegionOptions(min_area_um2=5.0))[1]
    assert not region.interiors


def test_classes_are_separate_and_background_is_skipped():
    labels = np.zeros((30, 30), np.uint8)
    labels[0:10, 0:10] = 1
    labels[0:10, 10:20] = 2
    regions = label_map_to_polygons(labels, downsample=1, mpp=1.0, options=EXACT)
    assert sorted(regions) == [1, 2]
    assert regions[2][0].bounds == pytest.approx((10, 0, 20, 10))
    assert label_map_to_polygons(labels, downsample=1, mpp=1.0, class_ids=[3])[3] == []


def test_simplification_respects_the_tolerance_in_micrometres():
    yy, xx = np.mgrid[:200, :200]
    disc = ((yy - 100) ** 2 + (xx - 100) ** 2 < 80**2).astype(np.uint8)
    mpp, downsample = 0.5, 2.0  # one label pixel = 1 µm = 2 level-0 px
    (fine,) = label_map_to_polygons(disc, downsample=downsample, mpp=mpp, options=EXACT)[1]
    (coarse,) = label_map_to_polygons(
        disc, downsample=downsample, mpp=mpp, options=RegionOptions(min_area_um2=0, simplify_um=3.0)
    )[1]
    assert len(coarse.exterior.coords) < len(fine.exterior.coords) / 4
    assert coarse.hausdorff_distance(fine) <= 3.0 / mpp + 1e-6  # 3 µm = 6 level-0 px


def test_bad_label_map_is_refused():
    with pytest.raises(InvalidInputError, match="2-D"):
        label_map_to_polygons(np.zeros((2, 3, 3)), downsample=1, mpp=1)
