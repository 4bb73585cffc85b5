"""Shared fixtures. Real data comes from one setting: WSIPIPE_DATA (default ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("WSIPIPE_DATA", REPO.parent / "shared" / "data")).resolve()


def pytest_sessionstart(session):
    if os.environ.get("WSIPIPE_REQUIRE_DATA") and not (DATA / "slides").is_dir():
        raise pytest.UsageError(f"shared data required but not found at {DATA} (set WSIPIPE_DATA)")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real data; skipped only outside CI when it is absent."""
    if not (DATA / "slides").is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def slides_dir(data_dir) -> Path:
    return data_dir / "slides"


@pytest.fixture()
def hold_folder_lock():
    """``hold(folder)`` locks ``folder`` from another process, as a second wsipipe run would;
    returns that process (killed after the test, if not before)."""
    import subprocess
    import sys

    holders = []

    def hold(folder, name=".wsipipe.lock"):
        code = ("import fcntl, sys, time; h = open(sys.argv[1], 'a'); fcntl.flock(h, fcntl.LOCK_EX | fcntl.LOCK_NB); "
                "print('held', flush=True); time.sleep(120)")
        holder = subprocess.Popen([sys.executable, "-c", code, str(folder / name)], stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout.readline().strip() == "held"
        return holder

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()
        holder.stdout.close()
