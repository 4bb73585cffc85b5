"""``wsipipe qc`` and ``--qc`` on tile, segment and nuclei: outputs read back with independent
readers, refusals with exact messages and exit codes, nothing left half-written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.qc import ARTEFACTS

runner = CliRunner()


@pytest.fixture(scope="module")
def cmu_qc(tmp_path_factory, cmu_small_svs):
    out = tmp_path_factory.mktemp("qc") / "cmu"
    result = runner.invoke(app, ["qc", str(cmu_small_svs), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_qc_writes_json_masks_and_picture(cmu_qc, slides_dir):
    out, output = cmu_qc
    assert output.startswith("CMU-1-Small-Region.svs: usable (")
    summary = json.loads((out / "qc.json").read_text())
    assert summary["usable"] is True and summary["verdict_rule"] == "all_passed"
    assert summary["brightfield"]["value"] is True
    assert set(summary["artefacts"]) == set(ARTEFACTS)
    assert summary["thresholds"]["focus_ratio_threshold"] == 0.45
    assert summary["stain"]["looks_like_he"] is True and summary["stain"]["h_angle_deg"] < 15
    group = zarr.open_group(str(out / "qc.zarr"), mode="r")
    attrs = group.attrs["wsipipe_qc"]
    assert attrs["slide_size"] == [2220, 2967]
    assert attrs["mpp"] == pytest.approx(0.499 * attrs["downsample"])
    usable = group["usable"][...]
    tissue = group["tissue"][...]
    assert usable.shape == tissue.shape == (round(2967 / attrs["downsample"]), round(2220 / attrs["downsample"]))
    flagged = np.zeros_like(tissue)
    for name in ARTEFACTS:
        flagged |= group[name][...]
    assert np.array_equal(usable, tissue & (1 - flagged))
    assert summary["usable_area_mm2"] == pytest.approx(usable.sum() * attrs["mpp"] ** 2 / 1e6)
    with Image.open(out / "qc.png") as picture:
        assert picture.mode == "RGB" and picture.height > tissue.shape[0]  # the legend strip below
    assert sorted(p.name for p in out.iterdir()) == [".wsipipe.lock", "qc.json", "qc.png", "qc.zarr"]


def test_qc_bad_input_is_one_line_and_leaves_nothing(tmp_path, broken_svs, cmu_small_svs):
    out = tmp_path / "broken"
    result = runner.invoke(app, ["qc", str(broken_svs), "-o", str(out)])
    assert result.exit_code == 2  # bad input
    assert (
        result.output.count("\n") == 1
        and result.output.startswith("Error: ")
        and "not a readable slide" in result.output
    )
    assert not out.exists()
    result = runner.invoke(app, ["qc", str(tmp_path / "missing.svs"), "-o", str(out)])
    assert (result.exit_code, result.output.strip()) == (2, f"Error: {tmp_path / 'missing.svs'}: no such file")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = runner.invoke(app, ["qc", str(cmu_small_svs), "-o", str(blocker / "out"), "-q"])
    assert result.exit_code == 2 and "cannot create the output folder" in result.output
    assert blocker.read_text() == "x"


@pytest.mark.parametrize(
    "command, slide",
    [
        ("tile", "dapi_ndpi"),
        pytest.param("segment", "tritc_ndpi", marks=pytest.mark.slow),
        ("nuclei", "dapi_ndpi"),  # segment loads its model first
    ],
)
def test_stages_refuse_fluorescence(tmp_path, request, command, slide):
    slide = request.getfixturevalue(slide)
    out = tmp_path / "out"
    target = out.with_suffix(".zarr") if command == "tile" else out
    result = runner.invoke(app, [command, str(slide), "-o", str(target), "-q"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line
    wavelength = "387" if "DAPI" in slide.name else "560"
    assert line.startswith(f"Error: {slide}: not brightfield (metadata 'hamamatsu.;NDP Shading Data' records ")
    assert f"records an excitation wavelength of {wavelength} nm" in line and line.endswith(
        "pass --qc off to run anyway"
    )
    assert not target.exists()


def test_nuclei_records_qc(tmp_path, ome_tiff):
    out = tmp_path / "nuclei"
    result = runner.invoke(app, ["nuclei", str(ome_tiff), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    qc = json.loads((out / "nuclei.json").read_text())["qc"]
    assert (qc["mode"], qc["usable"], qc["left_out_fraction"]) == ("auto", True, 0.0)


@pytest.mark.slow
def test_segment_report_records_qc(tmp_path, cmu_small_svs):
    out = tmp_path / "segment"
    result = runner.invoke(app, ["segment", str(cmu_small_svs), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["qc"]["mode"] == "auto" and report["qc"]["usable"] is True
    assert report["qc"]["left_out_fraction"] < 0.03  # the bundled example is left (nearly) whole
    assert "quality control" in (out / "report.html").read_text()


def test_tile_with_qc_off_tiles_fluorescence(tmp_path, dapi_ndpi):
    result = runner.invoke(app, ["tile", str(dapi_ndpi), "-o", str(tmp_path / "t.zarr"), "-q", "--qc", "off"])
    assert result.exit_code == 0, result.output


def test_tile_reuses_a_qc_folder_and_refuses_another_slides(tmp_path, cmu_qc, cmu_small_svs, jp2k_svs):
    out, _ = cmu_qc
    store = tmp_path / "cmu.zarr"
    result = runner.invoke(app, ["tile", str(cmu_small_svs), "-o", str(store), "-q", "--qc", str(out)])
    assert result.exit_code == 0, result.output
    qc = zarr.open_group(str(store), mode="r").attrs["wsipipe"]["qc"]
    assert (qc["mode"], qc["source"], qc["usable"]) == ("reused", str(out), True)
    assert qc["left_out_fraction"] == 0.0
    other = tmp_path / "tcga.zarr"
    result = runner.invoke(
        app, ["tile", str(jp2k_svs), "-o", str(other), "-q", "--mpp-override", "0.25", "--qc", str(out / "qc.zarr")]
    )
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: --qc {out / 'qc.zarr'}: made for a 2220x2967 px slide, not this 4443x3567 px one"
    )
    assert not other.exists()
    result = runner.invoke(app, ["tile", str(cmu_small_svs), "-o", str(other), "--qc", "sometimes"])
    assert (result.exit_code, result.output.strip()) == (
        2,
        "Error: --qc sometimes: not 'auto', 'off' or an existing qc output folder or qc.zarr",
    )


def test_qc_job_and_cohort_page(tmp_path, cmu_small_svs, dapi_ndpi, tritc_ndpi):
    from wsipipe.batch.jobs import SkipSlide, qc_job, segment_job
    from wsipipe.batch.state import SlideRecord
    from wsipipe.batch.summary import write_summary

    records = []
    for slide in (cmu_small_svs, dapi_ndpi):
        workdir = tmp_path / slide.name.split(".")[0]
        workdir.mkdir()
        figures = qc_job(slide, workdir, {})
        records.append(SlideRecord(key=slide.name, path=str(slide), name=workdir.name, state="done", figures=figures))
    assert [r.figures["qc_usable"] for r in records] == [True, False]
    assert records[1].figures["qc_rule"] == "brightfield"
    write_summary(tmp_path, records)
    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"qc_usable", "qc_rule", "qc_brightfield", "qc_usable_fraction", *(f"qc_{a}" for a in ARTEFACTS)} <= set(
        header
    )
    page = (tmp_path / "qc_cohort.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "not usable (brightfield)" in page and "<h2>pen</h2>" in page
    with pytest.raises(SkipSlide, match="not brightfield"):
        segment_job(tritc_ndpi, tmp_path / "seg", {"qc": "auto"})


def test_plan_tiles_leaves_pen_out(cmu_small_svs):
    """segment's planning with QC: the tissue under a burned-in pen stroke is left out and counted."""
    import cv2
    from test_qc_validation import INKS, ArrayReader

    from wsipipe.qc.apply import usable_tissue
    from wsipipe.segment import plan_tiles
    from wsipipe.slide import open_slide

    with open_slide(cmu_small_svs) as reader:
        rgb = reader.read_region((0, 0), 0, reader.dimensions)
    stroke = np.zeros(rgb.shape[:2], np.uint8)
    cv2.line(stroke, (300, 400), (1900, 2500), 1, 300)
    rgb[stroke > 0] = np.rint(rgb[stroke > 0] * (np.asarray(INKS["green"]) / 255)).astype(np.uint8)
    burned = ArrayReader(rgb, 0.499)
    plain = plan_tiles(burned, 1.0, 256, 32)
    checked = plan_tiles(burned, 1.0, 256, 32, usable=usable_tissue(burned, "auto"))
    assert plain.qc == {"mode": "off"}
    left_out = plain.tissue_mask.sum() - checked.tissue_mask.sum()
    assert left_out > 0 and checked.qc["left_out_fraction"] == pytest.approx(left_out / plain.tissue_mask.sum())
    assert checked.qc["left_out_mm2"] == pytest.approx(left_out * (0.499 * plain.mask_downsample) ** 2 / 1e6)
    assert checked.qc["artefact_fractions"]["pen"] > 0.1


@pytest.mark.slow
def test_batch_qc_over_an_archive(tmp_path, cmu_small_svs, dapi_ndpi):
    archive = tmp_path / "archive"
    archive.mkdir()
    for slide in (cmu_small_svs, dapi_ndpi):
        shutil.copy(slide, archive / slide.name)
    out = tmp_path / "out"
    result = runner.invoke(app, ["batch", str(archive), "-o", str(out), "--job", "qc", "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and "qc_usable" in rows[0]
    assert (out / "qc_cohort.html").is_file()


def test_nuclei_refuses_when_qc_leaves_no_tissue(tmp_path, ome_tiff):
    """A reused qc folder whose usable mask is empty: refused before any output, not run everywhere."""
    from wsipipe.qc import run_qc
    from wsipipe.qc.outputs import write_qc_outputs
    from wsipipe.slide import open_slide

    slide = ome_tiff
    with open_slide(slide) as reader:
        result = run_qc(reader)
    result.usable[:] = 0
    (tmp_path / "qc").mkdir()
    write_qc_outputs(result, tmp_path / "qc")
    out = tmp_path / "nuclei"
    outcome = runner.invoke(app, ["nuclei", str(slide), "-o", str(out), "-q", "--qc", str(tmp_path / "qc")])
    assert outcome.exit_code == 2
    assert outcome.output.strip().startswith(f"Error: {slide}: quality control left no usable tissue (")
    assert outcome.output.strip().endswith("pass --qc off to run anyway") and not out.exists()
