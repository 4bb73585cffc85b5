"""Tile grid geometry: tile counts and level-0 coordinates worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from wsipipe.errors import InvalidInputError, MppUnknownError
from wsipipe.grid import build_grid, count_sampled_mask, grid_coords, sample_mask, tissue_fractions
from wsipipe.slide import open_slide

# CMU-1-Small-Region.svs: 2220 x 2967 px at 0.499 µm/px, one level.


@pytest.fixture(scope="module")
def cmu(cmu_small_svs):
    return open_slide(cmu_small_svs)


@pytest.mark.parametrize(
    ("mpp", "columns", "rows", "second_x"),
    [
        # tile extent 512 * mpp / 0.499 level-0 px; columns = ceil((2220 - extent) / extent) + 1
        (0.5, 5, 6, 513),  # extent 513.03
        (1.0, 3, 3, 1026),  # extent 1026.05
        (2.0, 2, 2, 2052),  # extent 2052.10
    ],
)
def test_grid_at_several_mpp(cmu, mpp, columns, rows, second_x):
    grid = build_grid(cmu, tile_size=512, mpp=mpp)
    assert len(grid.coords) == columns * rows
    assert grid.coords.dtype == np.int64
    assert tuple(grid.coords[0]) == (0, 0)
    assert tuple(grid.coords[1]) == (second_x, 0)  # row-major: x varies first
    assert tuple(grid.coords[columns]) == (0, second_x)
    assert grid.level == 0 and not grid.native and grid.mpp == mpp
    # The last tile reaches the slide's far corner.
    extent = 512 * mpp / 0.499
    assert grid.coords[:, 0].max() + extent >= 2220 and grid.coords[:, 1].max() + extent >= 2967


def test_overlap_sets_the_stride_and_the_grid_starts_half_an_overlap_out(cmu):
    grid = build_grid(cmu, tile_size=512, overlap=256, mpp=0.5)
    # downsample 0.5 / 0.499: step 256.513, margin 128.257, extent 513.026 level-0 px;
    # columns ceil((2220 + 256.513 - 513.026) / 256.513) + 1 = 9, rows ceil((2967 + ...) / 256.513) + 1 = 12
    assert len(grid.coords) == 9 * 12
    assert tuple(grid.coords[0]) == (-128, -128)
    assert tuple(grid.coords[3]) == (641, -128)  # round(3 * 256.513 - 128.257)


@pytest.mark.parametrize(
    "height,width,tile,overlap", [(301, 263, 64, 16), (64, 64, 64, 0), (10, 500, 64, 32), (97, 97, 64, 33)]
)
def test_every_pixel_lies_half_an_overlap_inside_a_tile(height, width, tile, overlap):
    """Where the blending window counts it, with the context of a tile around it (white beyond an edge)."""
    coords = grid_coords((width, height), tile, overlap, 1.0)
    inside = np.zeros((height, width), int)
    margin = overlap // 2
    for x, y in coords:
        inside[max(0, y + margin) : max(0, y + tile - margin), max(0, x + margin) : max(0, x + tile - margin)] += 1
    assert inside.min() >= 1
    xs, ys = sorted(set(coords[:, 0])), sorted(set(coords[:, 1]))
    assert xs[0] == ys[0] == -margin
    assert all(b - a == tile - overlap for axis in (xs, ys) for a, b in zip(axis, axis[1:]))


def test_grid_by_level_without_mpp(jp2k_svs):
    reader = open_slide(jp2k_svs)
    grid = build_grid(reader, tile_size=512, level=1)
    # level 1 downsample 2.0005: extent 1024.26; columns ceil(3418.74 / 1024.26) + 1 = 5, rows ceil(2542.74 / 1024.26) + 1 = 4
    assert len(grid.coords) == 20 and grid.native and grid.mpp is None
    assert tuple(grid.coords[1]) == (1024, 0) and tuple(grid.coords[5]) == (0, 1024)
    with pytest.raises(MppUnknownError, match="pass mpp_override X"):
        build_grid(reader, tile_size=512, mpp=0.5)


def test_native_mpp_on_a_level(jp2k_svs):
    reader = open_slide(jp2k_svs, mpp_override=0.25)
    grid = build_grid(reader, tile_size=256, mpp=0.25 * 2.0005055500659967)
    assert grid.level == 1 and grid.native


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile_size": 0, "mpp": 0.5}, "^tile_size must be positive"),
        ({"tile_size": 256, "overlap": 256, "mpp": 0.5}, "^overlap must be at least 0 and less than tile_size"),
        ({"tile_size": 256, "overlap": -1, "mpp": 0.5}, "^overlap must be at least 0"),
        ({"tile_size": 256, "mpp": 0.1}, "finer than the slide's level 0"),
        ({"tile_size": 256, "mpp": 1000.0}, "too coarse"),
        ({"tile_size": 256, "level": 3}, "^level 3 does not exist"),
    ],
)
def test_invalid_grids_are_usage_errors(cmu, kwargs, message):
    with pytest.raises(InvalidInputError, match=message) as caught:
        build_grid(cmu, **kwargs)
    assert caught.value.exit_code == 2


def test_tissue_fraction_per_tile():
    mask = np.zeros((10, 20), np.uint8)
    mask[:, :10] = 1  # left half tissue
    coords = np.array([[0, 0], [40, 0], [80, 0], [160, 0], [-20, 0]], np.int64)
    # mask pixel = 4 level-0 px, tile extent 40 level-0 px = 10 mask px
    fractions = tissue_fractions(mask, 4.0, coords, 40.0)
    # tile 1 covers mask columns 10-19 (all glass); tile 3 is half past the right edge; tile 4 half before the left
    np.testing.assert_allclose(fractions, [1.0, 0.0, 0.0, 0.0, 0.5])
    fractions = tissue_fractions(mask, 4.0, np.array([[20, 0]]), 40.0)
    np.testing.assert_allclose(fractions, [0.5])


def test_sample_mask_takes_the_nearest_mask_pixel_of_each_level0_point():
    mask = np.array([[1, 0], [0, 2]], np.uint8)  # covers a 4 x 6 (width x height) slide
    centres_y = np.arange(6) + 0.5  # 3 level-0 rows per mask row
    centres_x = np.array([0.5, 1.5, 2.5, 3.5, 9.5])  # the last lies past the slide
    sampled = sample_mask(mask, (4, 6), centres_y, centres_x)
    expected = np.array([[True, True, False, False, False]] * 3 + [[False, False, True, True, True]] * 3)
    np.testing.assert_array_equal(sampled, expected)


@pytest.mark.parametrize("scale", [0.37, 1.0, 3.3, 17.0])
def test_count_sampled_mask_counts_what_sample_mask_samples(scale):
    """The report's tissue pixel count, computed from the mask alone, equals counting the sampled grid."""
    rng = np.random.default_rng(int(scale * 10))
    mask = (rng.random((61, 83)) > 0.6).astype(np.uint8) * 255
    level0_size = (2490, 1830)  # (width, height): 30 level-0 px per mask pixel, rounded
    centre_y = (np.arange(int(1830 / scale) + 3) + 0.5) * scale  # a few past the far edge, as a grid's last ones
    centre_x = (np.arange(int(2490 / scale) + 3) + 0.5) * scale
    sampled = sample_mask(mask, level0_size, centre_y, centre_x)
    assert count_sampled_mask(mask, level0_size, centre_y, centre_x) == int(sampled.sum()) > 0
