"""Shared options: one spelling per option, old spellings still read (hidden), and library errors
printed with the flags of the parameters they name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.cli.options import parameter_flags

REPO = Path(__file__).resolve().parents[2]
GOOD = "CMU-1-Small-Region.svs"
ROOT = typer.main.get_command(app)


def _params(command: str, *argv: str) -> dict:
    """The parameters ``wsipipe COMMAND ARGV`` parses into (nothing runs)."""
    return ROOT.commands[command].make_context(command, list(argv)).params


@pytest.mark.parametrize(
    "argv",
    [
        ("--out", "o", "--workers", "3"),
        ("--out=o", "-w", "3"),
        ("-o", "o", "-w3"),
        ("--output", "o", "--readers", "3"),
    ],
)
def test_segment_reads_its_old_spellings(argv):
    params = _params("segment", "slide.svs", *argv)
    assert params["outdir"] == Path("o") and params["readers"] == 3


def test_tile_reads_its_old_spellings():
    assert _params("tile", "slide.svs", "-o", "t.zarr", "-w", "4")["readers"] == 4
    assert _params("tile", "slide.svs", "-o", "t.zarr", "--workers=4")["readers"] == 4


def test_an_argument_after_double_dash_is_never_an_alias():
    assert _params("segment", "-o", "o", "--", "--out")["slide"] == Path("--out")


def test_the_old_spellings_are_hidden_and_w_means_dask_workers_only():
    runner = CliRunner()
    for command in ("segment", "tile"):
        shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        assert "--readers" in shown and "--output" in shown
        assert not re.search(r"--out\b|--workers|-w\b", shown), command
    assert re.search(r"--workers\s+-w", runner.invoke(app, ["batch", "--help"], env={"COLUMNS": "200"}).output)


def test_every_command_spells_a_shared_option_alike():
    """Each parameter name has one flag across the commands, and reading slides takes --backend."""
    flags: dict[str, set[str]] = {}
    commands = [ROOT]
    while commands:
        command = commands.pop()
        commands.extend(getattr(command, "commands", {}).values())
        for param in command.params:
            if param.param_type_name == "option" and not param.hidden:
                flags.setdefault(param.name, set()).add(next(o for o in param.opts if o.startswith("--")))
    assert {name: spelled for name, spelled in flags.items() if len(spelled) > 1} == {}
    slide_readers = ["info", "tile", "segment", "nuclei", "qc", "batch"]
    assert all("backend" in {p.name for p in ROOT.commands[c].params} for c in slide_readers)
    assert not {"out", "workers"} & {p.name for c in ("tile", "segment") for p in ROOT.commands[c].params}


def test_every_parameter_a_library_error_names_has_a_flag():
    """A name the table lacks would be printed as the Python name: each one the library writes has a flag."""
    named = set()
    for path in (REPO / "wsipipe").rglob("*.py"):
        if "cli" not in path.parts:
            for group in re.findall(r"parameter=(\([^)]*\)|\"\w+\")", path.read_text()):
                named |= set(re.findall(r"\"(\w+)\"", group))
    assert len(named) > 20
    flags = parameter_flags(ROOT)
    assert {name for name in named if name not in flags} == set()
    assert all(flags[name].startswith("--") for name in named)


def test_the_cli_prints_the_flags_a_library_error_names(slides_dir, tmp_path):
    """The error is raised by the library (``grid.validate_tiling``) with the parameters' names."""
    result = CliRunner().invoke(
        app, ["tile", str(slides_dir / GOOD), "-o", str(tmp_path / "t.zarr"), "--overlap", "512", "--tile-size", "512"]
    )
    assert result.exit_code == 2
    assert result.stderr == "Error: --overlap must be at least 0 and less than --tile-size (512), got 512\n"
    synth = CliRunner().invoke(
        app, ["synth", str(tmp_path / "s.tif"), "--width", "64", "--height", "64", "--tile-size", "8", "--levels", "1"]
    )
    assert synth.exit_code == 2
    assert synth.stderr == "Error: --tile-size must be a multiple of 16 (JPEG MCUs), got 8\n"
    assert not any(tmp_path.iterdir())


def test_a_library_name_the_cli_spells_otherwise_gets_the_cli_flag(tmp_path):
    """The training data's ``groups_csv`` is the CLI's --groups."""
    flags = parameter_flags(ROOT)
    assert flags["groups_csv"] == "--groups" and flags["outdir"] == "--output" and flags["workers"] == "--workers"


def test_help_loads_no_heavy_library():
    """``wsipipe --help`` (and every command's start) loads neither torch nor OpenCV: they cost a
    third of a second before anything is done."""
    import subprocess
    import sys

    code = "import sys; from wsipipe.cli.main import app; print(sorted({'torch', 'cv2', 'zarr'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
