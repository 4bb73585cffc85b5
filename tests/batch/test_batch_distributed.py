"""A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1: a batch, and a worker
killed in the middle of a slide."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from batch_archive import EXPECTED_STATES, build_archive, dask_cluster, read_status_csv, read_summary_csv
from typer.testing import CliRunner

from wsipipe.batch import JobSpec, discover, job_spec, run_batch
from wsipipe.cli.main import app
from wsipipe.errors import WsipipeError

runner = CliRunner()


@pytest.fixture(scope="module")
def archive(tmp_path_factory, slides_dir):
    return build_archive(tmp_path_factory.mktemp("batch_dist"), slides_dir)


@pytest.fixture(scope="module")
def scheduler():
    with dask_cluster(n_workers=2, gpu_workers=1) as address:
        yield address


def test_batch_through_a_real_scheduler_and_two_workers(archive, scheduler, tmp_path):
    outdir = tmp_path / "out"
    result = runner.invoke(app, ["batch", str(archive), "-o", str(outdir), "--job", "info", "--scheduler", scheduler])
    assert result.exit_code == 1, result.output
    status = read_status_csv(outdir)
    assert {k: row["state"] for k, row in status.items()} == EXPECTED_STATES
    assert len({row["worker"] for row in status.values()}) == 2  # both workers took slides
    assert all((outdir / row["name"] / "info.json").is_file() for row in status.values() if row["state"] == "done")


def test_a_worker_killed_mid_slide_is_replaced_and_the_batch_finishes(archive, scheduler, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    entries = [e for e in discover(archive) if e.key in ("ward A/..svs", "ward B/2024/CMU-1-Small-Region.svs")]
    killed = []

    def kill_first_worker_that_starts() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            started = sorted(markers.glob("*.start"))
            if started:
                pid = int(started[0].name.split(".")[0])
                slide = started[0].read_text()
                os.kill(pid, signal.SIGKILL)
                killed.append((slide, pid))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_worker_that_starts)
    killer.start()
    try:
        records = run_batch(
            entries,
            tmp_path / "out",
            job_spec("batch_test_jobs:marked_sleep_job"),
            {"marker_dir": str(markers), "sleep": "2"},
            scheduler=scheduler,
        )
    finally:
        killer.join()
    assert killed, "no slide started"
    assert [r.state for r in records] == ["done", "done"]
    slide, pid = killed[0]
    victim = next(r for r in records if r.path == slide)
    assert victim.figures["pid"] != pid  # finished by another worker process
    starts = sorted(m.read_text() for m in markers.glob("*.start"))
    assert len(starts) == 3 and starts.count(slide) == 2  # the killed slide started twice


def test_cuda_slides_go_only_to_workers_declaring_a_gpu(archive, scheduler, tmp_path):
    from distributed import Client

    with Client(scheduler) as client:
        gpu_pids = {
            pid for address, pid in client.run(os.getpid).items()
            if client.scheduler_info()["workers"][address]["resources"].get("GPU")
        }  # fmt: skip
    job = JobSpec("device-test", "batch_test_jobs:device_job", None, device_option="device")
    entries = discover(archive)
    records = run_batch(entries, tmp_path / "gpu", job, {"device": "cuda"}, scheduler=scheduler)
    assert {r.figures["pid"] for r in records} == gpu_pids and len(gpu_pids) == 1
    cpu = run_batch(entries, tmp_path / "cpu", job, {"device": "cpu"}, scheduler=scheduler)
    assert len({r.figures["pid"] for r in cpu}) == 2  # CPU slides use every worker


def test_cuda_job_without_gpu_workers_is_refused(archive, tmp_path):
    job = JobSpec("device-test", "batch_test_jobs:device_job", None, device_option="device")
    with (
        dask_cluster(n_workers=1) as address,
        pytest.raises(WsipipeError, match="no worker of the scheduler declares a GPU"),
    ):
        run_batch(discover(archive)[:1], tmp_path / "out", job, {"device": "cuda"}, scheduler=address)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small untrained U-Net file (8 µm/px, 64 px tiles): enough to run the segment pipeline."""
    import torch

    from wsipipe.models import build_model
    from wsipipe.models.io import model_metadata, save_model

    torch.manual_seed(0)
    model = build_model("plain-unet", 2, {"base": 4}).eval()
    meta = model_metadata("plain-unet", {"base": 4}, ["background", "tumour"], 8.0, 64)
    return save_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", model, meta)


def test_segment_job_through_the_cluster(archive, scheduler, tiny_model, tmp_path):
    outdir = tmp_path / "out"
    args = ["batch", str(archive), "-o", str(outdir), "--job", "segment", "--model", str(tiny_model),
            "--normalize", "none", "--device", "cpu", "--pattern", "CMU*.svs", "--scheduler", scheduler]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = read_summary_csv(outdir)
    assert list(summary) == ["ward A/CMU-1-Small-Region.svs", "ward B/2024/CMU-1-Small-Region.svs"]
    for row in summary.values():
        assert list(row)[4] == "tumour_fraction"
        report = json.loads((outdir / row["name"] / "report.json").read_text())
        assert float(row["tumour_area_mm2"]) == pytest.approx(report["tumour_area_mm2"], rel=1e-5)
        assert int(row["n_tiles"]) == report["n_tiles"] > 0
        assert (outdir / row["name"] / "prediction.zarr").is_dir()


def test_segment_job_with_nuclei_set_per_slide_in_a_manifest(archive, scheduler, tiny_model, tmp_path):
    a, b = "ward A/CMU-1-Small-Region.svs", "ward B/2024/CMU-1-Small-Region.svs"
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"slide,nuclei\n{archive / a},yes\n{archive / b},false\n", encoding="utf-8")
    outdir = tmp_path / "out"
    args = ["batch", str(manifest), "-o", str(outdir), "--job", "segment", "--model", str(tiny_model),
            "--normalize", "none", "--device", "cpu", "--scheduler", scheduler]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = read_summary_csv(outdir)
    with_nuclei, without = summary[str(archive / a)], summary[str(archive / b)]
    assert list(with_nuclei)[4:8] == ["tumour_fraction", "nuclei_count", "nuclei_per_mm2", "cellularity"]
    report = json.loads((outdir / with_nuclei["name"] / "report.json").read_text())
    assert int(with_nuclei["nuclei_count"]) == report["nuclei_count"] > 1000
    for figure in ("nuclei_per_mm2", "nuclei_per_mm2_tumour", "cellularity"):
        value = report[figure]
        assert (
            (with_nuclei[figure] == "")
            if value is None
            else float(with_nuclei[figure]) == pytest.approx(value, rel=1e-5)
        )
    assert (outdir / with_nuclei["name"] / "nuclei.csv").is_file()
    assert without["nuclei_count"] == "" and not (outdir / without["name"] / "nuclei.csv").exists()

    manifest.write_text(f"slide,nuclei\n{archive / a},maybe\n", encoding="utf-8")
    result = runner.invoke(app, [*args[:3], str(tmp_path / "out2"), *args[4:]])
    assert result.exit_code == 2 and "nuclei='maybe': must be true or false" in result.output


def test_segment_job_refuses_a_missing_model_before_anything_runs(archive, tmp_path):
    result = runner.invoke(app, ["batch", str(archive), "-o", str(tmp_path / "out"), "--job", "segment",
                                 "--model", str(tmp_path / "none.safetensors")])  # fmt: skip
    assert result.exit_code == 2
    assert "none.safetensors: no such model file" in result.output
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, ["batch", str(archive), "-o", str(tmp_path / "out"), "--job", "info",
                                 "--normalize", "none"])  # fmt: skip
    assert result.exit_code == 2 and "--normalize does not apply to the 'info' job" in result.output
    result = runner.invoke(app, ["batch", str(archive), "-o", str(tmp_path / "out"), "--job", "segment",
                                 "--nuclei-model", str(archive / "notes.svs")])  # fmt: skip
    assert result.exit_code == 2 and "notes.svs: not a safetensors model file" in result.output
    assert not (tmp_path / "out").exists()
