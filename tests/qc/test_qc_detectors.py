"""The detectors on hand-built images whose answer is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsipipe.qc import detectors as d
from wsipipe.qc.stage import _glass_brightness, _reference_stains


@pytest.mark.parametrize("slide_mpp, expected", [(0.25, 0.5), (0.227, 0.454), (0.5, 1.0), (0.8, 1.0), (2.0, 2.0)])
def test_focus_is_read_at_twice_the_slide_mpp_within_bounds(slide_mpp, expected):
    assert d.focus_mpp(slide_mpp) == pytest.approx(expected)


def _rgb_of(od: np.ndarray) -> np.ndarray:
    """8-bit pixels transmitting exp(-od) of the light."""
    return np.clip(np.rint(255 * np.exp(-od)), 0, 255).astype(np.uint8)


def _stained(stains: np.ndarray, shape=(60, 60)) -> np.ndarray:
    """OD of a field where haematoxylin and eosin amounts vary over 0.2-1.2 each."""
    amounts = np.stack(np.meshgrid(np.linspace(0.2, 1.2, shape[1]), np.linspace(1.2, 0.2, shape[0])), axis=-1)
    return amounts @ stains


def _unit_normal(stains: np.ndarray) -> np.ndarray:
    normal = np.cross(stains[0], stains[1])
    return normal / np.linalg.norm(normal)


def _rotated(stains: np.ndarray, degrees: float) -> np.ndarray:
    """Both stain vectors turned by ``degrees`` about an axis within their plane: a plane tilted by it."""
    axis = stains[0] / np.linalg.norm(stains[0])
    angle = math.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    return stains @ rotation.T


@pytest.mark.parametrize("tilt_deg", [0.0, 12.0])
def test_ink_is_measured_off_the_slides_own_stain_plane(tilt_deg):
    reference = _reference_stains()
    stains = _rotated(reference, tilt_deg)  # this slide's stains, off the reference by tilt_deg
    od = _stained(stains)
    ink = np.array([0.19, 2.14, 2.14])  # red marker (210, 30, 30) over the tissue: the ODs add
    covered = np.zeros(od.shape[:2], bool)
    covered[:, :24] = True  # 40 % of the tissue
    od[covered] += ink
    off = d.off_stain_plane(_rgb_of(od), np.ones(od.shape[:2], np.uint8), reference)
    expected = abs(float(ink @ _unit_normal(stains)))
    assert expected > d.INK_OFF_PLANE_OD
    assert np.percentile(off[~covered], 99) < 0.05  # 8-bit rounding only
    assert np.median(off[covered]) == pytest.approx(expected, abs=0.05)


def test_dense_tissue_is_not_under_exposed_but_light_loss_is():
    tissue = np.zeros((400, 400), np.uint8)
    tissue[4:396, 4:396] = 1  # 1.6 mm of tissue at 4 µm/px, a rim of glass
    rgb = np.full((400, 400, 3), 245, np.uint8)
    rgb[tissue > 0] = (60, 40, 125)  # dense haematoxylin everywhere: blue passes 125 < 128
    over, under = d.detect_exposure(rgb, 4.0, tissue, 245.0)
    assert not over.any() and not under.any()  # as dark as the slide's typical tissue
    rgb[100:220, 100:220] = (27, 18, 56)  # that tissue at 0.45 of the light, 480 µm square
    over, under = d.detect_exposure(rgb, 4.0, tissue, 245.0)
    assert not over.any()
    inside = np.zeros_like(under)
    inside[100:220, 100:220] = 1
    assert under[101:219, 101:219].all() and not (under & (1 - inside)).any()  # edges: the 3 px median


def test_a_slide_dim_everywhere_is_under_exposed():
    tissue = np.zeros((400, 400), np.uint8)
    tissue[4:396, 4:396] = 1
    rgb = np.full((400, 400, 3), 110, np.uint8)  # glass at 0.45 of the light: the whole scan is dim
    rgb[tissue > 0] = (100, 70, 90)  # pink tissue at 0.45 of the light
    _, under = d.detect_exposure(rgb, 4.0, tissue, None, 110.0)
    assert under[tissue > 0].all()
    _, under = d.detect_exposure(rgb, 4.0, tissue, None, 245.0)  # were the glass bright, typical tissue
    assert not under.any()


def test_over_exposure_spans_dense_tissue_in_a_clipped_field_but_not_sparse_specks():
    tissue = np.ones((300, 300), np.uint8)
    rgb = np.full((300, 300, 3), (230, 170, 200), np.uint8)  # pale pink tissue, nothing clipped
    rgb[50:250:20, 50:250:20] = (255, 200, 230)  # clipped specks every 80 µm (4 µm/px)
    over, _ = d.detect_exposure(rgb, 4.0, tissue, 245.0)
    assert not over.any()
    field = np.zeros((300, 300), bool)
    field[50:250, 50:250] = True  # an 800 µm field, clipped ...
    rgb[field] = (255, 200, 230)
    rgb[50:250, 140:165] = (120, 60, 150)  # ... but for a band of dense tissue 100 µm wide
    over, _ = d.detect_exposure(rgb, 4.0, tissue, 245.0)
    assert over[60:240, 50:250].all() and not over[~field].any()  # the band's ends meet unclipped tissue


def test_glass_brightness_is_the_top_of_its_noise():
    thumbnail = np.zeros((10, 10, 3), np.uint8)
    thumbnail[...] = (230, 240, 247)
    tissue = np.zeros((10, 10), np.uint8)
    assert _glass_brightness(thumbnail, tissue) == 247.0  # no noise: its brightest channel
    thumbnail[:5, :, 2] = 251  # half the glass two levels brighter, half two darker
    thumbnail[5:, :, 2] = 245
    assert _glass_brightness(thumbnail, tissue) == pytest.approx(248 + 3 * 3)
    tissue[:] = 1
    assert _glass_brightness(thumbnail, tissue) is None


def test_focus_tiles_move_into_one_stored_tile_when_their_cell_has_room():
    from wsipipe.qc.stage import _stored_tile_side, _within_stored_tile

    assert _stored_tile_side({"openslide.level[0].tile-width": "512", "openslide.level[0].tile-height": "512"}) == 512
    assert _stored_tile_side({"openslide.level[0].tile-width": "512", "openslide.level[0].tile-height": "256"}) is None
    assert _stored_tile_side({}) is None
    # A 256 px read starting at 900 straddles the stored tiles 512-1023 and 1024-1535; its centre
    # (1028) is in the second, so it moves right by 124 px, if its cell leaves that much room.
    assert _within_stored_tile(900, 256, 512, room=200) == 1024
    assert _within_stored_tile(900, 256, 512, room=100) == 900
    assert _within_stored_tile(1100, 256, 512, room=0) == 1100  # already inside one
