"""Classical nuclei: colour deconvolution against skimage, segmentation and tiling on real images."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2hed, rgb_from_hed

from wsipipe.metrics.instance import aji, match
from wsipipe.nuclei.classical import (
    ClassicalParams,
    calibrate,
    component_peaks,
    distance_to_background,
    estimate_stain_matrix,
    fill_holes,
    full_stain_matrix,
    haematoxylin_od,
    open_cross,
    segment_nuclei,
)
from wsipipe.nuclei.data import cpm15_magnifications, load_cpm15, load_monuseg, read_rgb
from wsipipe.nuclei.tiled import segment_image_tiled, segment_tiled


@pytest.fixture(scope="module")
def cpm15(cpm15_dir):
    return load_cpm15(cpm15_dir)


def test_haematoxylin_is_skimage_rgb2hed_in_natural_od(cpm15_dir):
    rgb = read_rgb(cpm15_dir / "image01.png")[:100, :100]
    # skimage divides ln(I) by ln(1e-6) (ours is -ln(I / 255)) and keeps its stain rows
    # unnormalised (ours are unit rows, which scales the concentration by the row's length)
    reference = rgb2hed(rgb)[..., 0] * -np.log(1e-6) * np.linalg.norm(rgb_from_hed[0])
    ours = haematoxylin_od(rgb)
    nonblack = (rgb > 0).all(axis=-1)
    assert np.allclose(ours[nonblack], reference[nonblack], atol=1e-3)


def test_two_row_stain_matrix_is_completed_orthogonally():
    m = full_stain_matrix([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
    assert m.shape == (3, 3)
    assert abs(m[2] @ m[0]) < 1e-9 and abs(m[2] @ m[1]) < 1e-9
    with pytest.raises(ValueError, match="dependent"):
        full_stain_matrix([[1, 0, 0], [2, 0, 0]])


def test_estimated_stain_matrix_is_h_and_e(cpm15):
    from wsipipe.stain.base import looks_like_he

    matrix = estimate_stain_matrix(cpm15[0].rgb)
    assert looks_like_he(matrix[:2])
    # the haematoxylin of a nucleus is above that of the background around it
    sample = cpm15[0]
    h = haematoxylin_od(sample.rgb, matrix)
    assert h[sample.instances > 0].mean() > 2 * h[sample.instances == 0].mean()


def test_classical_segmentation_finds_the_nuclei(cpm15):
    scores, counts = [], []
    for sample in cpm15[:4]:
        labels = segment_nuclei(sample.rgb, sample.mpp, calibrate(sample.rgb), ClassicalParams(threshold_scale=0.8))
        assert labels.dtype == np.int32 and labels.max() == np.unique(labels).size - 1  # ids 1..n
        scores.append(aji(sample.instances, labels))
        counts.append(labels.max() / (np.unique(sample.instances).size - 1))
    assert np.mean(scores) > 0.35, scores
    assert 0.6 < np.median(counts) < 1.6, counts


def _tiled_matches_whole(sample, core, margin):
    calibration = calibrate(sample.rgb, "macenko")
    params = ClassicalParams(threshold_scale=0.8)
    whole = segment_nuclei(sample.rgb, sample.mpp, calibration, params)
    tiled, nuclei = segment_image_tiled(
        sample.rgb,
        lambda rgb: segment_nuclei(rgb, sample.mpp, calibration, params),
        lambda rgb: haematoxylin_od(rgb, calibration.stain_matrix),
        core=core,
        margin=margin,
    )
    assert [n.id for n in nuclei] == list(range(1, tiled.max() + 1))  # unique ids, no gaps
    assert np.array_equal(np.unique(tiled)[1:], np.arange(1, tiled.max() + 1))
    n_whole, n_tiled = whole.max(), tiled.max()
    assert abs(n_tiled - n_whole) <= 0.01 * n_whole, (n_whole, n_tiled)
    pairs = match(whole, tiled, threshold=0.9)
    assert pairs.tp >= 0.99 * n_whole, (pairs.tp, n_whole)


def test_fast_steps_equal_the_scipy_and_skimage_ones_on_real_images(cpm15):
    """The faster replacements must change nothing: same masks, distances and seeds, bit for bit."""
    from scipy import ndimage
    from skimage.feature import peak_local_max

    for sample in cpm15[:4]:
        calibration = calibrate(sample.rgb)
        h = ndimage.gaussian_filter(haematoxylin_od(sample.rgb, calibration.stain_matrix), 1.0)
        raw = h > calibration.threshold * 0.9
        opened = open_cross(raw)
        assert np.array_equal(opened, ndimage.binary_opening(raw))
        foreground = fill_holes(opened)
        assert np.array_equal(foreground, ndimage.binary_fill_holes(opened)) and foreground.sum() > opened.sum()
        distance = distance_to_background(foreground)
        assert np.array_equal(distance, ndimage.distance_transform_edt(foreground))
        smooth = ndimage.gaussian_filter(distance, 1.0)
        components, _ = ndimage.label(foreground)
        for spacing in (1, 5):
            expected = peak_local_max(smooth, min_distance=spacing, labels=components, exclude_border=False)
            assert np.array_equal(component_peaks(smooth, components, spacing), expected)


def test_component_peaks_on_plateaus_and_crowded_labels():
    """Integer images full of ties, components touching at corners and wedged between others."""
    from scipy import ndimage
    from skimage.feature import peak_local_max

    rng = np.random.default_rng(0)
    for _ in range(100):
        image = rng.integers(0, 4, (30, 30)).astype(float)
        labels, _ = ndimage.label(rng.random((30, 30)) > 0.4)
        for spacing in (1, 2, 3):
            expected = peak_local_max(image, min_distance=spacing, labels=labels, exclude_border=False)
            assert np.array_equal(component_peaks(image, labels, spacing), expected)
    assert component_peaks(np.ones((4, 4)), np.zeros((4, 4), int), 2).shape == (0, 2)


def test_tiles_give_the_same_nuclei_as_the_whole_image(cpm15, monuseg_dir):
    # small cores (64 µm at 0.5 µm/px) so that many nuclei straddle core borders
    for sample in (cpm15[0], cpm15[12]):
        _tiled_matches_whole(sample, core=128, margin=48)
    monuseg = load_monuseg(monuseg_dir, limit=1)
    _tiled_matches_whole(monuseg[0], core=160, margin=48)


def test_a_nucleus_on_a_tile_corner_is_counted_once():
    yy, xx = np.mgrid[:200, :200]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 < 12**2  # centred on the corner of four 100 px cores
    rgb = np.full((200, 200, 3), 240, np.uint8)
    rgb[disc] = (60, 40, 120)
    segment = lambda image: (image[..., 0] < 128).astype(np.int32)  # noqa: E731
    labels, nuclei = segment_image_tiled(rgb, segment, lambda image: image[..., 0] / 255.0, core=100, margin=30)
    assert len(nuclei) == 1 and labels.max() == 1
    assert np.array_equal(labels > 0, disc)
    assert nuclei[0].area_px == disc.sum()
    assert (nuclei[0].centroid_x, nuclei[0].centroid_y) == pytest.approx((100, 100), abs=0.5)


def _overlapping_nuclei(min_pixels):
    """Two cores (x 0-99, 100-199) whose windows segment differently: the first finds nucleus A
    (x 90-104, 300 px, centroid in core 0), the second nucleus B (x 100-111, 240 px, centroid in
    core 1), overlapping A on x 100-104. B is painted where A left background: 7 x 20 = 140 px."""
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[..., 1] = np.arange(200)  # each window knows where it is

    def segment(window):
        labels = np.zeros(window.shape[:2], np.int32)
        x = window[..., 1].astype(int)
        first = x.min() == 0
        labels[40:60][(x[40:60] >= (90 if first else 100)) & (x[40:60] < (105 if first else 112))] = 1
        return labels

    out = np.zeros((100, 200), np.int32)
    tiles = []
    nuclei = segment_tiled(
        lambda y0, x0, y1, x1: rgb[y0:y1, x0:x1],
        (100, 200),
        segment,
        lambda image: image[..., 0] / 255.0,
        out,
        core=100,
        margin=30,
        on_tile=tiles.append,
        min_pixels=min_pixels,
    )
    return out, nuclei, tiles


def test_a_nucleus_cut_below_the_minimum_by_its_neighbour_is_dropped():
    out, nuclei, tiles = _overlapping_nuclei(min_pixels=150)
    assert [n.area_px for n in nuclei] == [300] and out.max() == 1 and np.count_nonzero(out) == 300
    out, nuclei, tiles = _overlapping_nuclei(min_pixels=140)  # at the minimum: kept
    assert [n.area_px for n in nuclei] == [300, 140] and np.count_nonzero(out == 2) == 140
    # each tile says where it painted, also beyond its core: A reaches 5 columns into core 1
    first, second = tiles
    assert first.painted.shape == (100, 130) and np.count_nonzero(first.painted[:, 100:]) == 100
    assert second.window == (0, 70, 100, 200) and np.array_equal(second.painted, out[:, 70:] == 2)


def test_cpm15_magnifications_and_resampling(cpm15, cpm15_dir):
    table = cpm15_magnifications(cpm15_dir / "README_challenge.txt")
    assert len(table) == 15 and table["image01"] == 20 and table["image15"] == 40
    raw = read_rgb(cpm15_dir / "image15.png")
    resampled = cpm15[14]
    assert resampled.rgb.shape[:2] == (round(raw.shape[0] / 2), round(raw.shape[1] / 2))
    assert resampled.instances.shape == resampled.rgb.shape[:2]
    assert cpm15[0].rgb.shape[:2] == read_rgb(cpm15_dir / "image01.png").shape[:2]


def test_monuseg_outlines_become_instances(monuseg_dir):
    import re

    xml = sorted((monuseg_dir).glob("*.xml"))[0]
    sample = load_monuseg(xml.parent, limit=1)[0]
    assert sample.rgb.shape[:2] == (505, 505)  # 1000 px at 0.2527 µm/px -> 505.4 px at 0.5 µm/px
    regions = len(re.findall(r"<Region\s", xml.read_text()))
    found = np.unique(sample.instances).size - 1
    assert 0.9 * regions <= found <= regions


def test_measurements_match_skimage_regionprops():
    from skimage.measure import regionprops

    yy, xx = np.mgrid[:60, :80]
    ellipse = ((xx - 40) / 20.0) ** 2 + ((yy - 30) / 8.0) ** 2 < 1
    rgb = np.full((60, 80, 3), 240, np.uint8)
    rgb[ellipse] = (60, 40, 120)
    _, nuclei = segment_image_tiled(
        rgb, lambda image: (image[..., 0] < 128).astype(np.int32), lambda image: image[..., 0] / 255.0
    )
    reference = regionprops(ellipse.astype(np.uint8))[0]
    assert nuclei[0].eccentricity == pytest.approx(reference.eccentricity)
    assert nuclei[0].perimeter_px == pytest.approx(reference.perimeter, rel=0.01)
    assert nuclei[0].area_px == reference.area
    assert nuclei[0].mean_haematoxylin_od == pytest.approx(60 / 255)
