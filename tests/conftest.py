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
