"""``wsipipe batch`` on inputs that are not slide files, on refused options and on Ctrl-C: each bad
slide fails alone, a refused batch leaves nothing behind, nothing blocks, no process is left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
from batch_archive import REPO, WORKER_ENV, read_status_csv
from terminal import foreground_ctrl_c
from typer.testing import CliRunner

from wsipipe.cli.main import app

INTERRUPTED = "Interrupted; run the same command again to resume."


def _batch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The command in its own process: on a FIFO, the code before the fix blocked for ever."""
    return subprocess.run([sys.executable, "-m", "wsipipe", "batch", *map(str, args)], env=WORKER_ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_link_loops_fifos_and_dangling_links_fail_alone(tmp_path, cmu_small_svs):
    archive = tmp_path / "archive"
    (archive / "sub").mkdir(parents=True)
    shutil.copy(cmu_small_svs, archive / "good.svs")
    os.symlink("loop2.svs", archive / "loop1.svs")
    os.symlink("loop1.svs", archive / "loop2.svs")
    os.symlink("gone.svs", archive / "dangling.svs")
    os.mkfifo(archive / "pipe.svs")
    os.symlink("..", archive / "sub" / "up")
    outdir = tmp_path / "out"
    result = _batch(archive, "-o", outdir, "--job", "info", "--workers", "1", "--quiet")
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"Error: 4 of 5 slides failed (tracebacks in {outdir / 'errors'}); run again with --retry-failed to retry them"
    ]
    status = read_status_csv(outdir)
    assert {k: r["state"] for k, r in status.items()} == {
        "dangling.svs": "failed", "good.svs": "done", "loop1.svs": "failed", "loop2.svs": "failed", "pipe.svs": "failed",
    }  # fmt: skip
    assert status["pipe.svs"]["error"] == f"{archive / 'pipe.svs'}: is a named pipe (FIFO), not a regular file"
    assert status["dangling.svs"]["error"] == f"{archive / 'gone.svs'}: no such file"
    for key in ("loop1.svs", "loop2.svs"):
        assert status[key]["error"].endswith(": a symbolic link loop")
    assert (archive / "pipe.svs").exists() and not (outdir / ".partial").exists()


def test_a_fifo_manifest_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "list.csv")
    result = _batch(tmp_path / "list.csv", "-o", tmp_path / "out", "--job", "info", timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"Error: {tmp_path / 'list.csv'}: is a named pipe (FIFO), not a regular file"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("slide,colour\na.svs,red\n", "a.svs: job 'info' takes no option 'colour' (accepted: backend, mpp_override)"),
        ("slide,mpp_override\na.svs,-1\n", "a.svs: option mpp_override='-1': must be a positive number"),
    ],
    ids=["unknown-column", "bad-value"],
)
def test_a_refused_manifest_creates_nothing(tmp_path, manifest, message):
    (tmp_path / "a.svs").write_bytes(b"x")
    (tmp_path / "list.csv").write_text(manifest, encoding="utf-8")
    outdir = tmp_path / "new" / "out"
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "list.csv"), "-o", str(outdir), "--job", "info"])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [f"Error: {message}"]
    assert not (tmp_path / "new").exists()


def test_cuda_without_a_gpu_is_refused_before_any_slide(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / "a.svs").write_bytes(b"x")
    (tmp_path / "list.csv").write_text("slide,device\na.svs,cuda\n", encoding="utf-8")
    outdir = tmp_path / "out"
    for args in ([str(tmp_path), "--device", "cuda"], [str(tmp_path / "list.csv")]):  # option, manifest cell
        result = CliRunner().invoke(app, ["batch", *args, "-o", str(outdir)])
        assert result.exit_code == 2, result.output
        lines = result.output.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: --device cuda: no CUDA GPU is available here"), lines
        assert not outdir.exists()


@pytest.mark.slow  # two local clusters and 3 s slides: about 20 s
def test_ctrl_c_exits_130_with_one_line_no_process_left_and_the_rerun_resumes(tmp_path, cmu_small_svs):
    archive = tmp_path / "archive"
    archive.mkdir()
    for index in range(4):
        shutil.copy(cmu_small_svs, archive / f"s{index}.svs")
    outdir = tmp_path / "out"
    argv = [sys.executable, "-m", "wsipipe", "batch", str(archive), "-o", str(outdir), "--job",
            "batch_test_jobs:sleepy_info_job", "--workers", "2", "--quiet"]  # fmt: skip
    # A terminal's Ctrl-C is SIGINT to the whole process group.
    process = subprocess.Popen(argv, env=WORKER_ENV, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=foreground_ctrl_c)  # fmt: skip
    children = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None and "done" not in _states(outdir).values():
            time.sleep(0.05)
        children = psutil.Process(process.pid).children(recursive=True)  # the next slides are in the workers' hands
        assert children and process.poll() is None
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        _, alive = psutil.wait_procs(children, timeout=15)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert stderr.splitlines() == [INTERRUPTED]
    assert not alive, "the interrupted batch left worker processes behind"
    assert not (outdir / ".partial").exists()
    at_interrupt = _slides(outdir)
    done = {key for key, slide in at_interrupt.items() if slide["state"] == "done"}
    assert done and len(done) < 4, at_interrupt
    rerun = subprocess.run(argv, env=WORKER_ENV, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert set(_states(outdir).values()) == {"done"} and len(_states(outdir)) == 4
    for key in done:  # kept, not done again
        assert _slides(outdir)[key]["finished"] == at_interrupt[key]["finished"]


def _slides(outdir) -> dict[str, dict]:
    try:
        return {s["key"]: s for s in json.loads((outdir / "status.json").read_text())["slides"]}
    except (OSError, ValueError):
        return {}


def _states(outdir) -> dict[str, str]:
    return {key: slide["state"] for key, slide in _slides(outdir).items()}
