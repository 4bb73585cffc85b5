"""The one exit-code rule of ``wsipipe.cli.main``: 2 bad input, 1 run-time failure (a full disk is
one plain line, whatever wrapped it), usage errors as one line."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wsipipe.cli.main import app

REPO = Path(__file__).resolve().parents[2]


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("out_name", ["out.geojson", "out.xml"])
def test_a_full_disk_while_writing_an_output_is_one_line_naming_it(tmp_path, monkeypatch, out_name, camelyon_xml):
    """The disk fills up when the written file is flushed (``atomic_path``'s fsync)."""
    out = tmp_path / out_name
    monkeypatch.setattr(os, "fsync", _full_disk)
    result = CliRunner().invoke(app, ["annotations", "convert", str(camelyon_xml), str(out), "-q"])
    assert result.exit_code == 1
    assert result.stderr == f"Error: no space left on device while writing {out}\n"
    assert sorted(os.listdir(tmp_path)) == []  # no output, no temporary


def test_a_full_disk_anywhere_in_the_causes_is_reported_as_such(tmp_path, monkeypatch, cmu_small_svs, camelyon_xml):
    """A write outside ``atomic_path`` (a zarr chunk, say) raises ENOSPC without a file name."""
    import wsipipe.cli.annotations as annotations_cli

    monkeypatch.setattr(annotations_cli, "_write_mask", _full_disk)
    result = CliRunner().invoke(
        app,
        [
            "annotations",
            "mask",
            str(camelyon_xml),
            "--slide",
            str(cmu_small_svs),
            "--mpp",
            "8",
            "-o",
            str(tmp_path / "m.png"),
            "-q",
        ],
    )
    assert result.exit_code == 1, result.output
    # (the lines before are warnings: the CAMELYON polygons lie outside this small slide)
    assert result.stderr.splitlines()[-1] == "Error: no space left on device while writing the outputs"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tile", "--bogus"], "Error: No such option: --bogus"),
        (["tile"], "Error: Missing argument 'slide'."),
        (["annotations", "mask", "x.xml"], "Error: Missing option '--slide'."),
        (["segment", "s.svs", "-o", "o", "--batch-size", "0"], "Error: Invalid value for '--batch-size': "),
        (["bogus"], "Error: No such command 'bogus'."),
    ],
)
def test_usage_errors_are_one_line_exit_2(argv, message):
    done = subprocess.run(
        [sys.executable, "-m", "wsipipe", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(message), done.stderr


def test_help_and_version_still_exit_0():
    runner = CliRunner()
    assert runner.invoke(app, ["tile", "--help"]).exit_code == 0
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("wsipipe ")
