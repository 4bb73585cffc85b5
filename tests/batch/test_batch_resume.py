"""A whole batch killed with SIGKILL and started again ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from batch_archive import EXPECTED_STATES, REPO, WORKER_ENV, build_archive, read_status_csv, read_summary_csv
from typer.testing import CliRunner

from wsipipe.cli.main import app

JOB = "batch_test_jobs:slow_info_job"
TIMING_FIELDS = {"started", "finished", "seconds", "worker"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory, slides_dir):
    return build_archive(tmp_path_factory.mktemp("batch_resume"), slides_dir)


def _command(archive, outdir) -> list[str]:
    return [sys.executable, "-m", "wsipipe", "batch", str(archive), "-o", str(outdir), "--job", JOB,
            "--workers", "1", "--quiet"]  # fmt: skip


def _done_count(outdir) -> int:
    try:
        slides = json.loads((outdir / "status.json").read_text())["slides"]
    except (OSError, ValueError):
        return 0
    return sum(s["state"] == "done" for s in slides)


def test_killed_batch_resumes_to_the_same_results(archive, tmp_path):
    killed_out = tmp_path / "killed"
    proc = subprocess.Popen(_command(archive, killed_out), env=WORKER_ENV, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    children = []
    try:
        deadline = time.monotonic() + 60
        while _done_count(killed_out) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        children = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, "the killed batch left worker processes behind"
    finally:
        for child in children:
            if child.is_running():
                child.kill()
        if proc.poll() is None:
            proc.kill()
    # status.json is written first, status.csv next: a kill between the two leaves the CSV behind.
    at_kill = {r["key"]: r for r in json.loads((killed_out / "status.json").read_text())["slides"]}
    done_at_kill = {k for k, row in at_kill.items() if row["state"] == "done"}
    assert 2 <= len(done_at_kill) < len(EXPECTED_STATES)

    resumed = subprocess.run(_command(archive, killed_out), env=WORKER_ENV, cwd=REPO, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert resumed.returncode == 1, resumed.stderr
    assert "4 of 9 slides failed" in resumed.stderr

    fresh_out = tmp_path / "fresh"
    fresh = CliRunner().invoke(app, ["batch", str(archive), "-o", str(fresh_out), "--job", JOB, "--workers", "2"])
    assert fresh.exit_code == 1

    resumed_status, fresh_status = read_status_csv(killed_out), read_status_csv(fresh_out)
    assert {k: r["state"] for k, r in resumed_status.items()} == EXPECTED_STATES
    for key, row in resumed_status.items():
        assert {k: v for k, v in row.items() if k not in TIMING_FIELDS | {"traceback", "path", "mtime_ns"}} == {
            k: v for k, v in fresh_status[key].items() if k not in TIMING_FIELDS | {"traceback", "path", "mtime_ns"}
        }
        if key in done_at_kill:  # not done twice
            assert row["finished"] == at_kill[key]["finished"]
    strip = lambda rows: {k: {c: v for c, v in r.items() if c != "seconds"} for k, r in rows.items()}  # noqa: E731
    assert strip(read_summary_csv(killed_out)) == strip(read_summary_csv(fresh_out))
    for row in resumed_status.values():
        if row["state"] != "done":
            continue
        for name in ("info.json", "thumbnail.png"):
            assert (killed_out / row["name"] / name).read_bytes() == (fresh_out / row["name"] / name).read_bytes()
        result = json.loads((killed_out / row["name"] / "result.json").read_text())
        reference = json.loads((fresh_out / row["name"] / "result.json").read_text())
        assert {k: v for k, v in result.items() if k not in TIMING_FIELDS} == {
            k: v for k, v in reference.items() if k not in TIMING_FIELDS
        }
    assert not (killed_out / ".partial").exists()
    assert sorted(p.name for p in killed_out.iterdir()) == sorted(p.name for p in fresh_out.iterdir())


def test_usage_errors_exit_2(archive, tmp_path):
    cases = [
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
        (["--job", "nope"], "--job 'nope'"),
        (["--job", "os.path:no_such_function"], "cannot import"),
        (["--pattern", "a/*.svs"], "patterns match file names"),
        (["--scheduler", "localhost"], "tcp://HOST"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(app, ["batch", str(archive), "-o", str(tmp_path / "o"), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output
    missing = subprocess.run([sys.executable, "-m", "wsipipe", "batch", str(tmp_path / "nowhere"), "-o",
                              str(tmp_path / "o")], env=WORKER_ENV, cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"Error: {tmp_path / 'nowhere'}: no such folder or manifest"
