"""``segment --backend``: the slide reader chosen reaches the main process and the reader processes."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

import pytest
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.segment import start_readers

GOOD = "CMU-1-Small-Region.svs"


def test_segment_opens_the_slide_with_the_backend(slides_dir, tmp_path):
    slide = slides_dir / GOOD
    result = CliRunner().invoke(
        app, ["segment", str(slide), "-o", str(tmp_path / "out"), "--backend", "wsidicom", "--device", "cpu", "-q"]
    )
    assert result.exit_code == 2
    assert result.stderr == f"Error: {slide}: --backend wsidicom reads DICOM series only\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # two spawned processes: seconds each on a loaded machine
def test_the_reader_processes_open_the_slide_with_the_backend(slides_dir):
    """A backend that cannot read the slide breaks the pool; one that can serves it."""
    refused = start_readers(slides_dir / GOOD, None, 1, backend="wsidicom")
    try:
        with pytest.raises(BrokenProcessPool):
            refused.submit(int).result(timeout=120)
    finally:
        refused.shutdown()
    served = start_readers(slides_dir / GOOD, None, 1, backend="tiffslide")
    try:
        assert served.submit(int).result(timeout=120) == 0
    finally:
        served.shutdown()
