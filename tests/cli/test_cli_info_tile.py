"""``wsipipe info`` / ``wsipipe tile`` on bad input: one line, the right exit code, input untouched."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wsipipe.cli.main import app

REPO = Path(__file__).resolve().parents[2]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tile(slide, out, *extra):
    return CliRunner().invoke(app, ["tile", str(slide), "-o", str(out), "--quiet", "--workers", "1", *extra])


def _assert_one_line_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def truncated(tmp_path, cmu_small_svs):
    path = tmp_path / "truncated.svs"
    data = (cmu_small_svs).read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


@pytest.fixture
def png(tmp_path):
    import cv2
    import numpy as np

    path = tmp_path / "picture.png"
    cv2.imwrite(str(path), np.full((64, 64, 3), 200, np.uint8))
    return path


@pytest.mark.parametrize(
    ("make_input", "needle"),
    [
        (lambda d, t: t / "missing.svs", "no such file"),
        (lambda d, t: t, "is a directory"),
        (lambda d, t: d / "broken.svs", "not a readable slide"),
        ("truncated", "not a readable slide"),
        ("png", "not a readable slide"),
    ],
    ids=["missing", "directory", "broken", "truncated", "png"],
)
def test_bad_slides_fail_with_one_line(slides_dir, tmp_path, request, make_input, needle):
    slide = request.getfixturevalue(make_input) if isinstance(make_input, str) else make_input(slides_dir, tmp_path)
    digest = _sha(slide) if slide.is_file() else None
    for result in (_tile(slide, tmp_path / "out.zarr"), CliRunner().invoke(app, ["info", str(slide)])):
        _assert_one_line_error(result, 2, str(slide), needle)
    assert not (tmp_path / "out.zarr").exists() and not (tmp_path / "out.zarr.partial").exists()
    if digest:
        assert _sha(slide) == digest


def test_text_file_is_refused(tmp_path):
    slide = tmp_path / "notes.txt"
    slide.write_text("not a slide\n")
    _assert_one_line_error(_tile(slide, tmp_path / "out.zarr"), 2, "not a readable slide")
    assert slide.read_text() == "not a slide\n"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--mpp", "0.1"], "finer than the slide's level 0"),
        (["--mpp", "1000"], "too coarse"),
        (["--tile-size", "0"], "--tile-size"),
        (["--tile-size", "256", "--overlap", "256"], "--overlap"),
        (["--tissue-threshold", "1.5"], "--tissue-threshold"),
        (["--level", "4"], "--level 4 does not exist"),
        (["--backend", "nope"], "unknown backend"),
    ],
)
def test_usage_errors_exit_2(tmp_path, extra, needle, cmu_small_svs):
    slide = cmu_small_svs
    _assert_one_line_error(_tile(slide, tmp_path / "out.zarr", *extra), 2, needle)
    assert not list(tmp_path.iterdir())


def test_output_under_a_file_or_missing_directory(tmp_path, cmu_small_svs):
    slide = cmu_small_svs
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    _assert_one_line_error(_tile(slide, blocker / "out.zarr"), 2, "is not a directory")
    _assert_one_line_error(_tile(slide, tmp_path / "nodir" / "out.zarr"), 2, "does not exist")
    _assert_one_line_error(_tile(slide, blocker), 2, "is a file")
    assert blocker.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_unwritable_output_directory(tmp_path, cmu_small_svs):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        _assert_one_line_error(_tile(cmu_small_svs, locked / "out.zarr"), 2, "not writable")
    finally:
        locked.chmod(0o755)


def test_unwritable_output_location(cmu_small_svs):
    # /proc refuses new directories even to root.
    _assert_one_line_error(_tile(cmu_small_svs, Path("/proc/wsipipe-test.zarr")), 2, "cannot write")


def test_non_store_directory_is_not_replaced(tmp_path, cmu_small_svs):
    out = tmp_path / "out.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    _assert_one_line_error(_tile(cmu_small_svs, out, "--overwrite"), 2, "not a wsipipe tile store")
    assert (out / "precious.txt").read_text() == "keep"


def test_slide_without_mpp_names_the_override_and_works_with_it(tmp_path, jp2k_svs):
    slide = jp2k_svs
    digest = _sha(slide)
    _assert_one_line_error(_tile(slide, tmp_path / "out.zarr"), 2, "--mpp-override", "or --level N")
    result = _tile(slide, tmp_path / "out.zarr", "--mpp-override", "0.25", "--tile-size", "256")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and str(tmp_path / "out.zarr") in result.output
    by_level = _tile(
        slide, tmp_path / "level.zarr", "--level", "1", "--tile-size", "512"
    )  # the other way the error names
    assert by_level.exit_code == 0 and "wrote" in by_level.output, by_level.output
    assert _sha(slide) == digest


def test_subprocess_errors_have_no_traceback(tmp_path, broken_svs, cmu_small_svs):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    header_only = tmp_path / "header-only.svs"  # tifffile finds its first page offset invalid and logs it
    header_only.write_bytes((cmu_small_svs).read_bytes()[:3000])
    for args, code in (
        (["tile", str(broken_svs), "-o", str(tmp_path / "a.zarr"), "-q"], 2),
        (["tile", str(header_only), "-o", str(tmp_path / "a.zarr"), "-q"], 2),
        (["tile", str(cmu_small_svs), "-o", str(tmp_path / "a.zarr"), "--tile-size", "0"], 2),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "wsipipe", *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == code, proc.stderr
        assert proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_tile_subprocess_with_two_workers_writes_a_store(tmp_path, ome_tiff):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "cmu.zarr"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsipipe",
            "tile",
            str(ome_tiff),
            "-o",
            str(out),
            "--tile-size",
            "256",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"to {out}" in proc.stdout and "tiles/s" in proc.stderr  # the progress bar
    import zarr

    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["wsipipe"]["complete"] and group["tiles"].shape[0] > 0


def test_a_fifo_is_refused_in_one_line_without_blocking(tmp_path, cmu_small_svs):
    """A FIFO named like an input: opening it would wait for a writer for ever (the old code did)."""
    from wsipipe.errors import AnnotationError, ModelError, SlideOpenError

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    fifos = {name: tmp_path / name for name in ("pipe.svs", "pipe.geojson", "pipe.safetensors", "pipe.png")}
    for fifo in fifos.values():
        os.mkfifo(fifo)
    slide, out = cmu_small_svs, tmp_path / "out.zarr"
    store = tmp_path / "stores" / "cmu.zarr"
    store.parent.mkdir()
    assert _tile(slide, store, "--tile-size", "256").exit_code == 0
    for args, code, message in (
        (
            ["info", fifos["pipe.svs"]],
            SlideOpenError.exit_code,
            f"{fifos['pipe.svs']}: is a named pipe (FIFO), not a regular file",
        ),
        (
            ["tile", fifos["pipe.svs"], "-o", out, "-q"],
            SlideOpenError.exit_code,
            f"{fifos['pipe.svs']}: is a named pipe (FIFO)",
        ),
        (
            ["tile", slide, "-o", out, "-q", "--annotations", fifos["pipe.geojson"]],
            AnnotationError.exit_code,
            f"{fifos['pipe.geojson']}: ",
        ),
        (
            ["annotations", "convert", fifos["pipe.geojson"], tmp_path / "a.xml"],
            AnnotationError.exit_code,
            f"{fifos['pipe.geojson']}: ",
        ),
        (["models", "info", fifos["pipe.safetensors"]], ModelError.exit_code, f"{fifos['pipe.safetensors']}: "),
        (
            ["normalize", store, "-o", store.parent / "n.zarr", "--target", fifos["pipe.png"], "-q"],
            2,
            f"{fifos['pipe.png']}: is a named pipe (FIFO), not a regular file",
        ),
    ):
        proc = subprocess.run([sys.executable, "-m", "wsipipe", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=60)  # fmt: skip
        assert proc.returncode == code, (args, proc.stderr)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {message}"), (args, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*fifos, "stores"])
    assert sorted(p.name for p in store.parent.iterdir()) == ["cmu.zarr"]
