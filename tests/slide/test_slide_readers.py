"""Slide readers against openslide's (and, for OME-TIFF, tiffslide's) own figures and pixels."""

from __future__ import annotations

import json

import numpy as np
import openslide
import pytest
import tifffile
import tiffslide
from PIL import Image
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.slide import open_slide

NOT_SLIDES = {"broken.svs"}  # covered by the bad-input tests


def _slides(slides_dir):
    return sorted(p for p in slides_dir.iterdir() if p.is_file() and p.name not in NOT_SLIDES)


def _number(value):
    return None if value is None else float(value)


def _info(path) -> dict:
    result = CliRunner().invoke(app, ["info", "--json", str(path)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_info_matches_the_slide_libraries_on_every_slide(slides_dir):
    slides = _slides(slides_dir)
    assert len(slides) >= 5
    for path in slides:
        info = _info(path)
        try:
            ref = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError:
            ref = tiffslide.TiffSlide(str(path))
            with tifffile.TiffFile(path) as tif:
                page = tif.series[0].levels[0]
                assert (info["width"], info["height"]) == (page.shape[1], page.shape[0]), path
                assert tif.is_ome and info["vendor"] == "ome-tiff", path
            props = {k.replace("tiffslide.", "openslide."): v for k, v in ref.properties.items()}
        else:
            props = dict(ref.properties)
            assert info["vendor"] == props.get("openslide.vendor"), path
        assert (info["width"], info["height"]) == tuple(ref.dimensions), path
        assert [(lvl["width"], lvl["height"]) for lvl in info["levels"]] == [tuple(d) for d in ref.level_dimensions], (
            path
        )
        assert [lvl["downsample"] for lvl in info["levels"]] == pytest.approx(list(ref.level_downsamples)), path
        assert info["mpp_x"] == _number(props.get("openslide.mpp-x")), path
        assert info["mpp_y"] == _number(props.get("openslide.mpp-y")), path
        assert info["objective_power"] == _number(props.get("openslide.objective-power")), path
        assert info["associated_images"] == sorted(ref.associated_images), path


def _openslide_on_white(slide: openslide.OpenSlide, location, level, size) -> np.ndarray:
    """openslide's RGBA composited on white by PIL, an independent reference."""
    region = slide.read_region(location, level, size)
    white = Image.new("RGBA", region.size, (255, 255, 255, 255))
    white.alpha_composite(region)
    return np.asarray(white.convert("RGB"))


def _positions(width, height):
    # corner, interior, and across the bottom-right edge (the reader must pad white)
    return [(0, 0), (width // 3, height // 3), (width - 100, height - 77)]


def test_native_level_reads_equal_openslide_read_region(slides_dir):
    checked = 0
    for path in _slides(slides_dir):
        try:
            ref = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError:
            continue
        reader = open_slide(path, backend="openslide")
        for level in range(ref.level_count):
            for location in _positions(*ref.dimensions):
                expected = _openslide_on_white(ref, location, level, (256, 200))
                np.testing.assert_array_equal(
                    reader.read_region(location, level, (256, 200)), expected, err_msg=f"{path} {level} {location}"
                )
                checked += 1
    assert checked >= 3 * (1 + 2 + 7 + 7)


def test_edge_tile_is_white_beyond_the_slide(cmu_small_svs):
    reader = open_slide(cmu_small_svs)
    width, height = reader.dimensions
    tile = reader.read_region((width - 10, height - 20), 0, (64, 64))
    assert (tile[20:, :] == 255).all() and (tile[:, 10:] == 255).all()
    assert (tile[:20, :10] != 255).any()


@pytest.mark.parametrize("name", ["cmu_small_svs", "jp2k_svs", "dapi_ndpi"])
def test_tiffslide_backend_matches_openslide_at_level_0(request, name):
    path = request.getfixturevalue(name)
    ref = openslide.OpenSlide(str(path))
    reader = open_slide(path, backend="tiffslide")
    assert reader.backend == "tiffslide"
    for location in _positions(*ref.dimensions):
        expected = _openslide_on_white(ref, location, 0, (256, 200))
        np.testing.assert_array_equal(
            reader.read_region(location, 0, (256, 200)), expected, err_msg=f"{name} {location}"
        )


def test_ome_tiff_reads_equal_tifffile_pixels(ome_tiff):
    path = ome_tiff
    reader = open_slide(path)
    assert reader.backend == "tiffslide"
    pixels = tifffile.imread(path)
    if pixels.shape[0] in (3, 4) and pixels.shape[-1] not in (3, 4):
        pixels = np.moveaxis(pixels, 0, -1)
    np.testing.assert_array_equal(reader.read_region((100, 200), 0, (300, 250)), pixels[200:450, 100:400, :3])
