"""Helper processes die with their parent and stay quiet on Ctrl-C: ``wsipipe.processes`` alone,
then ``segment``'s reader processes under a real Ctrl-C and a real ``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from terminal import foreground_ctrl_c

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
HELPER = (
    "import sys, time; from wsipipe.processes import die_with_parent; die_with_parent(int(sys.argv[1])); "
    "print('armed', flush=True); time.sleep(120)"
)


def _gone_within(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """The processes still alive after ``seconds`` (those left are killed, so no test leaks them)."""
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    for process in alive:
        process.kill()
    return alive


def test_a_helper_dies_when_its_parent_is_killed():
    parent_code = (
        "import os, subprocess, sys, time; "
        f"h = subprocess.Popen([sys.executable, '-c', {HELPER!r}, str(os.getpid())], stdout=subprocess.PIPE, text=True); "
        "assert h.stdout.readline().strip() == 'armed'; print(h.pid, flush=True); time.sleep(120)"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, env=ENV)
    helper = psutil.Process(int(parent.stdout.readline()))
    parent.kill()
    parent.wait()
    parent.stdout.close()
    assert _gone_within([helper], 5) == []


def test_a_helper_whose_parent_is_already_gone_exits_at_once():
    """The parent died before the parent-death signal was armed: the helper sees another parent."""
    done = subprocess.run([sys.executable, "-c", HELPER, "1"], capture_output=True, text=True, env=ENV, timeout=60)
    assert done.returncode == 1 and "armed" not in done.stdout


def test_a_helper_ignores_ctrl_c():
    helper = subprocess.Popen(
        [sys.executable, "-c", HELPER, str(os.getpid())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        preexec_fn=foreground_ctrl_c,  # so that ignoring it is the helper's own doing
    )
    try:
        assert helper.stdout.readline().strip() == "armed"
        helper.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert helper.poll() is None
    finally:
        helper.kill()
        _, stderr = helper.communicate()
    assert "KeyboardInterrupt" not in stderr


def _segment_with_readers(slide: Path, outdir: Path):
    """A ``segment`` run in its own process group, once its two reader processes run; with every
    process it started so far."""
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wsipipe",
            "segment",
            str(slide),
            "-o",
            str(outdir),
            "-q",
            "--device",
            "cpu",
            "--workers",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
        preexec_fn=foreground_ctrl_c,
    )
    parent = psutil.Process(run.pid)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        children = parent.children(recursive=True)
        if sum("spawn_main" in " ".join(c.cmdline()) for c in children if c.is_running()) >= 2:
            return run, children
        assert run.poll() is None, run.stderr.read()
        time.sleep(0.05)
    run.kill()
    raise AssertionError("segment started no reader processes in 120 s")


@pytest.mark.slow
def test_ctrl_c_on_segment_is_one_line_and_exit_130(cmu_small_svs, tmp_path):
    run, children = _segment_with_readers(cmu_small_svs, tmp_path / "out")
    time.sleep(0.5)  # the readers are past their start-up
    os.killpg(run.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    _, stderr = run.communicate(timeout=120)
    assert stderr.splitlines() == ["Interrupted; run the same command again to resume."], stderr
    assert run.returncode == 130
    assert _gone_within(children, 5) == []


@pytest.mark.slow
def test_kill_9_of_segment_takes_its_readers_and_the_resource_tracker_along(cmu_small_svs, tmp_path):
    run, children = _segment_with_readers(cmu_small_svs, tmp_path / "out")
    names = [" ".join(c.cmdline()) for c in children]
    assert any("resource_tracker" in name for name in names), names
    run.kill()
    run.wait()
    run.stderr.close()
    alive = _gone_within(children, 5)
    assert alive == [], [" ".join(p.cmdline()) for p in alive]
