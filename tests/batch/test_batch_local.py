"""``wsipipe batch`` over a messy archive: LocalCluster run, outputs, status, reruns, retries."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import tifffile
from batch_archive import EXPECTED_STATES, UNICODE_NAME, build_archive, read_status_csv, read_summary_csv
from typer.testing import CliRunner

from wsipipe.batch.naming import output_name
from wsipipe.cli.main import app
from wsipipe.tissue import detect_tissue

runner = CliRunner()
GOOD = sorted(k for k, s in EXPECTED_STATES.items() if s == "done")
BAD = sorted(k for k, s in EXPECTED_STATES.items() if s == "failed")


@pytest.fixture(scope="module")
def archive(tmp_path_factory, slides_dir):
    return build_archive(tmp_path_factory.mktemp("batch_local"), slides_dir)


@pytest.fixture(scope="module")
def first_run(archive):
    """One batch with the command's own LocalCluster of two worker processes."""
    outdir = archive.parent / "out"
    result = runner.invoke(app, ["batch", str(archive), "-o", str(outdir), "--job", "info", "--workers", "2"])
    return outdir, result


@pytest.fixture(scope="module")
def cluster_address():
    """A LocalCluster the rerun tests share through --scheduler (Dask start-up is slow)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster:  # fmt: skip
        yield cluster.scheduler_address


def test_first_run_states_exit_code_and_errors(first_run):
    outdir, result = first_run
    assert result.exit_code == 1, result.output
    assert "4 of 9 slides failed" in result.output
    status = read_status_csv(outdir)
    assert {k: row["state"] for k, row in status.items()} == EXPECTED_STATES
    for key in BAD:
        row = status[key]
        assert row["outputs"] == ""
        assert not (outdir / row["name"]).exists()
        trace = (outdir / row["traceback"]).read_text()
        assert row["error"] in trace and "Traceback" in trace
    assert "not a readable slide" in status["notes.svs"]["error"]
    assert "corrupt or truncated" in status["damaged.svs"]["error"]
    assert not (outdir / ".partial").exists()


def test_outputs_match_the_slides(first_run, archive):
    outdir, _ = first_run
    status = read_status_csv(outdir)
    summary = read_summary_csv(outdir)
    for key in GOOD:
        row = status[key]
        folder = outdir / row["name"]
        assert sorted(p.name for p in folder.iterdir()) == ["info.json", "result.json", "thumbnail.png"]
        assert row["outputs"].split(";") == [
            f"{row['name']}/{n}" for n in ("info.json", "thumbnail.png", "result.json")
        ]
        with tifffile.TiffFile(archive / key) as reference:  # level 0 is the first page
            height, width = reference.pages[0].shape[:2]
        info = json.loads((folder / "info.json").read_text())
        assert (info["width"], info["height"]) == (width, height)
        thumb = cv2.imread(str(folder / "thumbnail.png"))[..., ::-1]
        assert max(thumb.shape[:2]) == min(512, max(width, height))
        assert abs(thumb.shape[1] / thumb.shape[0] - width / height) < 0.01
        # Tissue fraction: the tissue detector tiling uses, on the written thumbnail at its µm/px.
        shrink = max(1.0, max(width, height) / 512)
        expected = float(np.mean(detect_tissue(np.ascontiguousarray(thumb), info["mpp_x"] and info["mpp_x"] * shrink)))
        assert float(summary[key]["tissue_fraction"]) == pytest.approx(expected, abs=0.02)
        assert int(summary[key]["width"]) == width and int(summary[key]["height"]) == height
        assert float(row["seconds"]) > 0
    assert summary["frozen/TCGA-CR-7395-01A-01-TS1.svs"]["mpp"] == ""  # no µm/px: blank, not 0
    assert float(summary["ward A/CMU-1-Small-Region.svs"]["mpp"]) == pytest.approx(0.499)
    assert summary["broken.svs"]["width"] == "" and summary["broken.svs"]["state"] == "failed"
    html = (outdir / "summary.html").read_text()
    assert "Gewebe ä 1 (ü).tif" in html and "9 slides: 5 done, 4 failed" in html


def test_names_are_unique_and_inside_outdir(first_run):
    outdir, _ = first_run
    status = read_status_csv(outdir)
    names = [row["name"] for row in status.values()]
    assert len(set(names)) == len(names)
    for key, row in status.items():
        assert row["name"] == output_name(key)
        assert (outdir / row["name"]).resolve().parent == outdir.resolve()
    assert status[UNICODE_NAME]["name"].startswith("Gewebe_a_1_u-")
    assert status["ward A/..svs"]["name"].startswith("slide-")


def test_rerun_skips_done_and_failed(first_run, cluster_address):
    """...and clears the temporaries a SIGKILL left mid-write, but no other file."""
    outdir, _ = first_run
    before = read_status_csv(outdir)
    stale = [outdir / ".status.csv.wsipipe-0123abcd.tmp", outdir / "errors" / ".slide.txt.wsipipe-89abcdef.tmp"]
    kept = [outdir / ".status.csv.tmp", outdir / "notes.0123abcd.tmp", outdir / ".status.csv.0123abcd.tmp"]
    for path in stale + kept:
        path.write_text("half")
    result = runner.invoke(
        app,
        ["batch", str(outdir.parent / "archive"), "-o", str(outdir), "--job", "info", "--scheduler", cluster_address],
    )
    assert result.exit_code == 1
    assert "5 already done, 4 failed before, 0 to process" in result.output
    assert read_status_csv(outdir) == before
    assert [p.exists() for p in stale + kept] == [False, False, True, True, True]
    for path in kept:
        path.unlink()


def test_changed_inputs_are_redone_and_failed_retried_only_on_request(first_run, cluster_address, ome_tiff):
    outdir, _ = first_run
    archive = outdir.parent / "archive"
    before = read_status_csv(outdir)
    # A re-scanned slide (other content) and a failed entry replaced by a real slide.
    shutil.copyfile(ome_tiff, archive / "ward A/CMU-1-Small-Region.svs")
    shutil.copyfile(ome_tiff, archive / "notes.svs")
    args = ["batch", str(archive), "-o", str(outdir), "--job", "info", "--scheduler", cluster_address]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    after = read_status_csv(outdir)
    redone = {k for k in after if after[k]["finished"] != before[k]["finished"]}
    assert redone == {"ward A/CMU-1-Small-Region.svs", "notes.svs"}
    assert after["notes.svs"]["state"] == "done" and after["notes.svs"]["traceback"] == ""
    assert not (outdir / before["notes.svs"]["traceback"]).exists()
    assert read_summary_csv(outdir)["ward A/CMU-1-Small-Region.svs"]["width"] == "1101"

    result = runner.invoke(app, [*args, "--retry-failed", "--limit", "1"])
    assert result.exit_code == 1
    retried = read_status_csv(outdir)
    redone = {k for k in retried if retried[k]["finished"] != after[k]["finished"]}
    assert redone == {"broken.svs"}  # the first failed slide in INPUT order, and only it
    assert retried["broken.svs"]["state"] == "failed"


def test_exit_code_zero_when_every_slide_is_done(archive, cluster_address, tmp_path):
    result = runner.invoke(app, ["batch", str(archive), "-o", str(tmp_path / "out"), "--job", "info", "--pattern", "*.TIF",
                                 "--scheduler", cluster_address, "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert list(read_status_csv(tmp_path / "out")) == [UNICODE_NAME]
    assert "1 slides: 1 done, 0 failed" in result.output


def test_manifest_with_annotation_and_options(archive, cluster_address, tmp_path, slides_dir):
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "slide,annotation,mpp_override\n"
        f"{archive / 'frozen/TCGA-CR-7395-01A-01-TS1.svs'},ann/tcga.xml,0.25\n"
        f"{archive / 'ward A/..svs'},,\n"
        "missing/gone.svs,,\n",
        encoding="utf-8",
    )
    result = runner.invoke(
        app, ["batch", str(manifest), "-o", str(tmp_path / "out"), "--job", "info", "--scheduler", cluster_address]
    )
    assert result.exit_code == 1, result.output  # the missing slide fails alone
    status = read_status_csv(tmp_path / "out")
    assert status["missing/gone.svs"]["state"] == "failed"
    assert status["missing/gone.svs"]["error"] == f"{tmp_path / 'missing/gone.svs'}: no such file"
    summary = read_summary_csv(tmp_path / "out")
    tcga = summary[str(archive / "frozen/TCGA-CR-7395-01A-01-TS1.svs")]
    assert float(tcga["mpp"]) == 0.25
    info = json.loads((tmp_path / "out" / tcga["name"] / "info.json").read_text())
    assert info["annotation"] == str(tmp_path / "ann/tcga.xml")
    assert summary[str(archive / "ward A/..svs")]["mpp"] != "0.25"


def test_skipped_slides_and_job_figures(archive, cluster_address, tmp_path):
    (archive.parent / "skip").mkdir()
    (archive.parent / "skip/keep.svs").write_bytes(b"12345")
    (archive.parent / "skip/please skip.svs").write_bytes(b"1")
    outdir = tmp_path / "out"
    args = ["batch", str(archive.parent / "skip"), "-o", str(outdir), "--job", "batch_test_jobs:skip_text_job",
            "--scheduler", cluster_address]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    status = read_status_csv(outdir)
    assert status["please skip.svs"]["state"] == "skipped"
    assert status["please skip.svs"]["error"] == "named to be skipped"
    summary = read_summary_csv(outdir)
    # Preferred figures first, blank when the job returns None or nothing.
    assert list(summary["keep.svs"])[4:7] == ["tumour_fraction", "nuclei_count", "size"]
    assert summary["keep.svs"]["size"] == "5" and summary["keep.svs"]["nuclei_count"] == ""
    assert summary["please skip.svs"]["tumour_fraction"] == ""
    assert (outdir / status["keep.svs"]["name"] / "size.txt").read_text() == "5"
    # Changing the job's settings makes done slides be done again.
    result = runner.invoke(app, [*args, "--mpp-override", "0.5"])
    assert "0 already done" in result.output


def test_finished_folders_are_adopted_and_half_written_ones_redone(first_run, cluster_address):
    """A batch killed after renaming a slide's folder but before recording it: the folder's
    result.json says which input it was made from. A folder without one is not taken for done."""
    import json as json_module

    outdir, _ = first_run
    archive = outdir.parent / "archive"
    adopted, redone = "ward B/2024/CMU-1-Small-Region.svs", UNICODE_NAME
    before = read_status_csv(outdir)
    status = json_module.loads((outdir / "status.json").read_text())
    for slide in status["slides"]:
        if slide["key"] in (adopted, redone):
            slide.update(state="running", finished="", figures={})
    (outdir / "status.json").write_text(json_module.dumps(status))
    (outdir / before[redone]["name"] / "result.json").unlink()
    result = runner.invoke(
        app, ["batch", str(archive), "-o", str(outdir), "--job", "info", "--scheduler", cluster_address]
    )
    assert "1 to process" in result.output
    after = read_status_csv(outdir)
    assert after[adopted]["state"] == "done" and after[adopted]["finished"] == before[adopted]["finished"]
    assert after[redone]["state"] == "done" and after[redone]["finished"] != before[redone]["finished"]
    assert (outdir / after[redone]["name"] / "result.json").is_file()
    assert read_summary_csv(outdir)[adopted]["width"] == "2220"
