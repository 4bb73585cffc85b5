"""Report: areas in mm² on masks of known area, JSON/PNG/HTML outputs, atomic writes."""

from __future__ import annotations

import base64
import json
import re

import cv2
import numpy as np
import pytest

from wsipipe.classes import palette
from wsipipe.errors import InvalidInputError, OutputError
from wsipipe.report import (
    class_pixel_counts,
    mask_area_mm2,
    pixel_area_mm2,
    render_overlay,
    render_tile_heatmap,
    write_bytes_atomic,
    write_overlay_png,
    write_report_html,
    write_report_json,
)
from wsipipe.stages import SegmentResult


def test_rectangle_area_in_mm2():
    mask = np.zeros((2000, 3000), bool)
    mask[100:1100, 200:700] = True  # 1000 x 500 px at 4 x 0.5 µm = 2 µm/px -> 2000 x 1000 µm
    assert mask_area_mm2(mask, 0.5, downsample=4) == pytest.approx(2.0)
    assert mask_area_mm2(mask, 0.5, 0.25, downsample=4) == pytest.approx(1.0)  # anisotropic pixels


def test_disc_area_matches_pi_r_squared():
    yy, xx = np.mgrid[:1000, :1000]
    radius_px = 400
    disc = (yy - 500) ** 2 + (xx - 500) ** 2 < radius_px**2
    mpp = 0.25  # radius 100 µm = 0.1 mm
    assert mask_area_mm2(disc, mpp) == pytest.approx(np.pi * 0.1**2, rel=1e-3)


def test_pixel_area_refuses_nonsense():
    with pytest.raises(InvalidInputError):
        pixel_area_mm2(0.0)
    assert pixel_area_mm2(1000.0) == 1.0  # a 1 mm pixel


def test_class_counts_read_band_by_band_match_bincount():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (5000, 370), dtype=np.uint8)
    counts = class_pixel_counts(labels, 3, block=128)
    assert counts.tolist() == np.bincount(labels.ravel(), minlength=3).tolist()


def test_class_counts_within_a_coarser_mask_drop_what_lies_outside():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (600, 400), dtype=np.uint8)
    tissue = np.zeros((60, 40), np.uint8)
    tissue[10:30, 5:25] = 1  # rows 100-299, cols 50-249 at full resolution
    counts = class_pixel_counts(labels, 3, within=tissue, block=128)
    inside = labels[100:300, 50:250]
    expected = np.bincount(inside.ravel(), minlength=3)
    expected[0] += labels.size - inside.size
    assert counts.tolist() == expected.tolist()


def _report(slide="slide <1>.svs"):
    return {
        "slide": slide,
        "mpp": 0.499,
        "model": {
            "name": "toy",
            "sha256": "ab" * 32,
            "mpp": 8.0,
            "classes": ["background", "tumour"],
            "trained_on": "7 images from lung",
        },
        "run": {"date": "2026-12-06 07:00:00 +0000", "command": "wsipipe segment s.svs -o out"},
        "prediction_shape": [2, 60, 80],
        "normalize": "none",
        "tissue_area_mm2": 2.0,
        "tumour_area_mm2": 0.5,
        "tumour_fraction": 0.25,
        "n_tiles": 12,
        "timings_s": {"tissue": 0.5, "inference": 2.0, "inference_model": 1.5, "total": 2.5},
        "tiles_per_s": {"inference": 6.0},
        "dimensions": [640, 480],
        "qc": {"mode": "off"},
        "class_areas_mm2": {"Tumor": 0.5},
        "n_regions": {},
        "regions_area_mm2": {},
        "regions": {"min_area_um2": 1000.0, "simplify_um": 8.0},
        "device": "cpu",
        "overlap_px": 16,
        "n_tiles_run": 12,
        "outputs": [],
        "wsipipe_version": "0.1.0",
    }


def _result(tmp_path, **changes):
    """The report as segment hands it to the page."""
    return SegmentResult.from_json({**_report(), **changes}, tmp_path)


def test_overlay_tints_and_outlines_the_mask_on_a_real_slide_thumbnail(cmu_small_svs):
    from wsipipe.slide import open_slide

    with open_slide(cmu_small_svs) as reader:
        thumbnail = reader.thumbnail_at_mpp(8.0)
    labels = np.zeros((thumbnail.shape[0] // 2, thumbnail.shape[1] // 2), np.uint8)
    labels[20:60, 20:60] = 1  # coarser than the thumbnail: resized (nearest) onto it
    overlay = render_overlay(thumbnail, labels, palette(["background", "tumour"]))
    assert overlay.shape == thumbnail.shape
    inside = (slice(50, 110), slice(50, 110))
    outside = (slice(0, 30), slice(0, 30))
    assert np.array_equal(overlay[outside], thumbnail[outside])
    tint = overlay[inside].astype(int) - thumbnail[inside].astype(int)
    assert tint[..., 0].mean() > 0 > tint[..., 1].mean()  # toward QuPath's tumour red (200, 0, 0)


def test_report_files(tmp_path):
    thumbnail = np.full((60, 80, 3), 230, np.uint8)
    labels = np.zeros((60, 80), np.uint8)
    labels[10:30, 10:40] = 1
    overlay = render_overlay(thumbnail, labels, palette(["background", "tumour"]))
    write_report_json(tmp_path / "report.json", _report())
    write_overlay_png(tmp_path / "overlay.png", overlay)
    write_report_html(tmp_path / "report.html", _result(tmp_path), thumbnail, overlay)
    assert json.loads((tmp_path / "report.json").read_text())["tumour_fraction"] == 0.25
    assert np.array_equal(cv2.imread(str(tmp_path / "overlay.png"))[..., ::-1], overlay)
    page = (tmp_path / "report.html").read_text()
    assert "slide &lt;1&gt;.svs" in page and "<1>" not in page  # names are escaped
    assert "25.0 %" in page
    # A scale bar on each picture: 80 picture px across 80 prediction px of 8 µm -> 8 µm/px.
    bars = re.findall(r'<svg class="scale" viewBox="0 0 80 60"[^>]*data-um="([0-9.]+)" data-px="([0-9.]+)"', page)
    assert bars == [("100", "12.500")] * 2
    assert page.count(">100 µm</text>") == 2
    # Readable, once: no raw JSON, no internal stage names, each timing once.
    assert "{" not in page.split("<body>")[1] and "inference_model" not in page and "timings_s" not in page
    assert page.count("tumour model over the tiles") == 1 and page.count("2.50 s") == 1
    for text in (
        "For research use only",
        f"wsipipe view {tmp_path}",
        "7 images from lung",
        "2026-12-06 07:00:00",
        "wsipipe segment s.svs -o out",
        "ab" * 32,
        "rgb(200, 0, 0)",
    ):  # QuPath's Tumor colour
        assert text in page, text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(images[1]), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded[..., ::-1], overlay)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing outside the page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.png", "report.html", "report.json"]


def test_unwritable_output_is_one_clear_error(tmp_path):
    with pytest.raises(OutputError, match="cannot write"):
        write_bytes_atomic(tmp_path / "missing-dir" / "report.json", b"{}")


def test_tile_heatmap_tints_each_box_by_its_value(tmp_path):
    thumbnail = np.full((40, 60, 3), 240, np.uint8)
    boxes = [(0, 0, 200, 200), (200, 0, 400, 200), (400, 0, 600, 200)]  # level-0 px, 10 per thumbnail px
    heat = render_tile_heatmap(thumbnail, boxes, [0.1, 0.4, None], level0_per_px=10, vmax=0.4)
    assert np.array_equal(heat[:, 40:], thumbnail[:, 40:])  # no value, and below every box: untouched
    assert np.array_equal(heat[20:], thumbnail[20:])
    low, high = heat[5, 10].astype(int), heat[5, 30].astype(int)
    assert (heat[:20, :20] == heat[5, 10]).all() and (heat[:20, 20:40] == heat[5, 30]).all()
    assert high.sum() < low.sum() and high[0] - high[2] > low[0] - low[2]  # darker and redder
    write_report_html(
        tmp_path / "r.html", _result(tmp_path, nuclei_count=7, cellularity=0.25), thumbnail, thumbnail, (heat, 0.4)
    )
    page = (tmp_path / "r.html").read_text()
    assert "cellularity per tile" in page and len(re.findall(r'src="data:image/png;base64,', page)) == 3
