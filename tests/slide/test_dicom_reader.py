"""DICOM WSI input: every level equals the slide it was converted from, either backend, and bad
series refused with one line and exit code 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import openslide
import pydicom
import pytest
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.dicom.series import resolve_series
from wsipipe.slide import open_slide

runner = CliRunner()
#: Mean absolute difference allowed where wsidicomizer re-encodes JPEG (quality 90).
JPEG_MAD = 2.0


def _whole_level(reader, level):
    lvl = reader.levels[level]
    return reader.read_region((0, 0), level, (lvl.width, lvl.height))


def _source_level(source, downsample):
    """The source level with this downsample (the conversion may drop the smallest levels)."""
    matches = [i for i, lvl in enumerate(source.levels) if abs(lvl.downsample - downsample) < 0.01 * downsample]
    assert matches, downsample
    return matches[0]


@pytest.mark.parametrize(
    ("name", "backend"),
    [
        ("cmu", "openslide"),
        ("ndpi", "openslide"),
        ("synth-j2k", "openslide"),
        ("synth-jpegls", "wsidicom"),
    ],
)
def test_every_level_equals_the_source_slide(dicom_series, name, backend):
    source_path, folder = dicom_series(name)
    with open_slide(folder) as dicom, open_slide(source_path) as source:
        assert dicom.backend == backend and dicom.vendor == "dicom"
        assert dicom.dimensions == source.dimensions
        assert dicom.mpp == pytest.approx(source.mpp, rel=1e-6)
        assert len(dicom.levels) >= min(3, len(source.levels))
        for level, lvl in enumerate(dicom.levels):
            expected = _whole_level(source, _source_level(source, lvl.downsample))
            np.testing.assert_array_equal(_whole_level(dicom, level), expected, err_msg=f"{name} level {level}")


def test_reencoded_jpeg_stays_within_jpeg_tolerance(dicom_series):
    source_path, folder = dicom_series("synth-jpeg")
    with open_slide(folder) as dicom, open_slide(source_path) as source:
        for level in range(len(dicom.levels)):
            mad = np.abs(_whole_level(dicom, level).astype(int) - _whole_level(source, level)).mean()
            print(f"synth-jpeg level {level}: MAD {mad:.3f}")
            assert 0 < mad < JPEG_MAD, level


def test_openslide_refuses_jpeg_ls_and_wsidicom_reads_what_openslide_reads(dicom_series):
    _, jpegls = dicom_series("synth-jpegls")
    base = resolve_series(jpegls).base.path
    with pytest.raises(openslide.OpenSlideError, match="Unsupported transfer syntax 1.2.840.10008.1.2.4.80"):
        openslide.OpenSlide(str(base))
    _, j2k = dicom_series("synth-j2k")
    with open_slide(j2k, backend="openslide") as first, open_slide(j2k, backend="wsidicom") as second:
        assert first.info() | {"backend": None, "associated_images": None} == second.info() | {
            "backend": None,
            "associated_images": None,
        }
        for level in range(len(first.levels)):
            np.testing.assert_array_equal(_whole_level(first, level), _whole_level(second, level))
        # across the far edge: white, as every backend pads
        width, height = first.dimensions
        np.testing.assert_array_equal(
            first.read_region((width - 50, height - 40), 0, (100, 90)),
            second.read_region((width - 50, height - 40), 0, (100, 90)),
        )


def test_any_file_of_the_series_opens_the_slide_with_mpp_from_pixel_spacing(dicom_series):
    _, folder = dicom_series("cmu")
    series = resolve_series(folder)
    label = next(i for i in series.instances if i.flavour == "LABEL")
    with open_slide(label.path) as reader, open_slide(folder) as whole:
        assert reader.dimensions == whole.dimensions and reader.path == label.path
    spacing = (
        pydicom.dcmread(series.base.path, stop_before_pixels=True)
        .SharedFunctionalGroupsSequence[0]
        .PixelMeasuresSequence[0]
        .PixelSpacing
    )
    info = json.loads(runner.invoke(app, ["info", "--json", str(folder)]).stdout)
    assert info["mpp_x"] == pytest.approx(float(spacing[1]) * 1000) and info["mpp_y"] == pytest.approx(
        float(spacing[0]) * 1000
    )
    assert {"label", "macro"} <= set(info["associated_images"]) and info["path"] == str(folder)


def _bad_series(tmp_path, dicom_series):
    """Folder name -> the message its one-line error holds."""
    _, cmu = dicom_series("cmu")
    _, synth = dicom_series("synth-j2k")
    cases = {}
    two = tmp_path / "two"
    shutil.copytree(cmu, two)
    for path in synth.iterdir():
        shutil.copy(path, two)
    cases[two] = "holds 2 DICOM whole-slide series"
    no_base = tmp_path / "no-base"
    shutil.copytree(synth, no_base)
    (no_base / resolve_series(synth).base.path.name).unlink()
    cases[no_base] = "lacks its base level"
    not_wsi = tmp_path / "not-wsi.dcm"
    ds = pydicom.dcmread(resolve_series(synth).base.path, stop_before_pixels=True)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    ds.save_as(not_wsi)
    cases[not_wsi] = "not a whole-slide image"
    truncated = tmp_path / "truncated"
    shutil.copytree(synth, truncated)
    base = truncated / resolve_series(synth).base.path.name
    base.write_bytes(base.read_bytes()[: base.stat().st_size // 2])
    cases[truncated] = "is truncated"
    not_dicom = tmp_path / "not-dicom.dcm"
    not_dicom.write_bytes(b"\0" * 200)
    cases[not_dicom] = "not a readable DICOM file"
    return cases


def test_bad_series_are_refused_with_one_line_and_exit_2(tmp_path, dicom_series):
    for path, message in _bad_series(tmp_path, dicom_series).items():
        result = runner.invoke(app, ["info", str(path)])
        assert result.exit_code == 2, (path, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
        out = tmp_path / f"{path.name}-tiles.zarr"
        result = runner.invoke(app, ["tile", str(path), "-o", str(out), "--quiet"])
        assert result.exit_code == 2 and message in result.output and not out.exists(), result.output
