"""Tissue detection: finds tissue on the H&E slides, never calls glass tissue."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from wsipipe.slide import open_slide
from wsipipe.tissue import detect_tissue, read_thumbnail, thumbnail_downsample


def _thumbnail_and_mask(path, mpp_override=None):
    reader = open_slide(path, mpp_override=mpp_override)
    downsample = thumbnail_downsample(reader)
    thumb = read_thumbnail(reader, downsample)
    um = reader.mpp_x * downsample if reader.mpp_x else None
    return thumb, detect_tissue(thumb, um)


@pytest.mark.parametrize("slide", ["cmu_small_svs", "jp2k_svs"])
def test_tissue_found_and_glass_not_tissue_on_he_slides(request, slide):
    thumb, mask = _thumbnail_and_mask(request.getfixturevalue(slide))
    assert mask.shape == thumb.shape[:2] and mask.dtype == np.uint8
    assert 0.15 < mask.mean() < 0.9
    # Glass: bright, grey pixels (independent of the detector's own saturation threshold).
    hsv = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)
    glass = (thumb.min(axis=2) > 215) & (hsv[..., 1] < 15)
    assert glass.mean() > 0.05
    assert mask[glass].mean() < 0.02
    # The four corners of both slides are glass.
    for corner in (mask[:8, :8], mask[:8, -8:], mask[-8:, :8], mask[-8:, -8:]):
        assert corner.max() == 0
    # Tissue: clearly stained pixels.
    stained = (hsv[..., 1] > 60) & (thumb.max(axis=2) < 230)
    assert mask[stained].mean() > 0.9


def test_detail_image_of_tissue_is_mostly_tissue(ome_tiff):
    _, mask = _thumbnail_and_mask(ome_tiff)
    assert mask.mean() > 0.5


def test_tcga_thumbnail_works_without_mpp(jp2k_svs):
    thumb, mask = _thumbnail_and_mask(jp2k_svs)
    # No µm/px: the thumbnail is 16 level-0 pixels per pixel.
    assert thumb.shape[:2] == (round(3567 / 16), round(4443 / 16))
    assert mask.any()


@pytest.mark.parametrize("slide", ["dapi_ndpi", "tritc_ndpi"])
def test_fluorescence_slides_do_not_crash_and_black_background_is_not_tissue(request, slide):
    thumb, mask = _thumbnail_and_mask(request.getfixturevalue(slide))
    assert mask.shape == thumb.shape[:2]
    black = thumb.max(axis=2) < 20
    # closing may bridge the dark gaps between nuclei, but not the empty background
    assert black.any() and mask[black].mean() < 0.15


def test_blank_glass_gives_empty_mask():
    rng = np.random.default_rng(0)
    glass = np.clip(240 + rng.normal(0, 4, (300, 300, 3)), 0, 255).astype(np.uint8)
    assert detect_tissue(glass).sum() == 0
    assert detect_tissue(np.full((50, 50, 3), 255, np.uint8)).sum() == 0


def test_pink_disc_on_glass_is_found_and_specks_removed():
    image = np.full((400, 400, 3), 245, np.uint8)
    cv2.circle(image, (200, 200), 100, (200, 110, 170), -1)
    cv2.circle(image, (40, 40), 2, (120, 40, 120), -1)  # debris far below the minimum area
    mask = detect_tissue(image, um_per_px=4.0)
    disc = np.zeros((400, 400), np.uint8)
    cv2.circle(disc, (200, 200), 100, 1, -1)
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou > 0.97
    assert mask[30:50, 30:50].sum() == 0
