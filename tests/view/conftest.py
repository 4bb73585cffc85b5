"""Fixtures of the viewer tests: a real ``segment --nuclei`` output of the bundled example (made
once per session), a running viewer, and headless Chromium driven by Selenium."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "data" / "CMU-1-Small-Region.svs"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="session")
def segment_out(tmp_path_factory) -> Path:
    """OUTDIR of ``segment --nuclei`` on the bundled example."""
    from wsipipe.stages import SegmentConfig, segment

    outdir = tmp_path_factory.mktemp("view") / "cmu1"
    segment.run(SegmentConfig(slide=EXAMPLE, output=outdir, nuclei=True, readers=0, qc="off"))
    return outdir


@pytest.fixture()
def serve():
    """``serve(path, **options)`` -> a running viewer (stopped after the test)."""
    from wsipipe.view import open_view

    servers = []

    def start(path, **options):
        server = open_view(path, port=0, **options)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.shutdown()
        thread.join(10)
        server.close()


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Chromium (Debian's, with its chromedriver); skipped outside CI when absent."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are required in CI (.ci/run installs them)")
        pytest.skip("no chromium / chromedriver (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("selenium is not installed (the test extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
