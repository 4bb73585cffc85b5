"""``wsipipe.stages`` configs: each value check once, naming its parameter; paths as ``Path``; the
batch options derived from the fields; results as JSON."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import typer

from wsipipe import stages
from wsipipe.cli.main import app
from wsipipe.cli.options import parameter_flags
from wsipipe.errors import InvalidInputError

PATHS = {"slide": "a.svs", "output": "out"}

#: (config, its required fields, bad values, the parameter named, the message after the parameter's name)
BAD_VALUES = [
    (stages.TileConfig, PATHS, {"tile_size": 0}, "tile_size", "must be positive, got 0"),
    (
        stages.TileConfig,
        PATHS,
        {"overlap": 512},
        "overlap",
        "must be at least 0 and less than tile_size (512), got 512",
    ),
    (stages.TileConfig, PATHS, {"overlap": -1}, "overlap", "must be at least 0 and less than tile_size (512), got -1"),
    (
        stages.TileConfig,
        PATHS,
        {"tile_size": 64, "overlap": 64},
        "overlap",
        "must be at least 0 and less than tile_size (64), got 64",
    ),
    (stages.TileConfig, PATHS, {"tissue_threshold": 1.5}, "tissue_threshold", "must be between 0 and 1, got 1.5"),
    (stages.TileConfig, PATHS, {"mpp": 0.0}, "mpp", "must be a positive number, got 0.0"),
    (stages.TileConfig, PATHS, {"mpp_override": -0.25}, "mpp_override", "must be a positive number, got -0.25"),
    (stages.TileConfig, PATHS, {"level": -1}, "level", "must be at least 0, got -1"),
    (stages.TileConfig, PATHS, {"readers": -1}, "readers", "must be at least 0, got -1"),
    (stages.TileConfig, PATHS, {"label_map": "Tumor=1"}, "label_map", "and strict need annotations"),
    (stages.TileConfig, PATHS, {"strict": True}, "label_map", "and strict need annotations"),
    (
        stages.NormalizeConfig,
        {"input": "a.zarr", "output": "b.zarr"},
        {"method": "spams"},
        "method",
        "'spams': expected one of vahadane, macenko, reinhard",
    ),
    (stages.QcConfig, PATHS, {"mpp_override": 0}, "mpp_override", "must be a positive number, got 0"),
]


@pytest.mark.parametrize(
    ("config", "required", "bad", "parameter", "why"),
    BAD_VALUES,
    ids=[f"{c.__name__}-{'-'.join(b)}" for c, _, b, _, _ in BAD_VALUES],
)
def test_each_check_names_its_parameter(config, required, bad, parameter, why):
    with pytest.raises(InvalidInputError) as caught:
        config(**required, **bad)
    error = caught.value
    assert error.parameter == parameter and error.exit_code == 2
    assert str(error) == f"{parameter} {why}"  # Python names, no dashes
    flags = parameter_flags(typer.main.get_command(app))  # the CLI writes every parameter named as its flag
    cli = f"{flags[parameter]} {why}"
    for name in error.parameters[1:]:
        cli = cli.replace(name, flags[name])
    assert error.text(flags) == cli


def test_good_values_pass_and_paths_become_paths(tmp_path):
    config = stages.TileConfig(
        slide=str(tmp_path / "a.svs"),
        output=os.fspath(tmp_path / "a.zarr"),
        annotations=tmp_path / "a.geojson",
        label_map="Tumor=1",
        strict=True,
        tile_size=64,
        overlap=63,
        tissue_threshold=1.0,
        level=0,
        readers=0,
    )
    assert config.slide == tmp_path / "a.svs" and isinstance(config.slide, Path)
    assert isinstance(config.output, Path) and isinstance(config.annotations, Path)
    assert stages.NormalizeConfig(input="a.zarr", output="b.zarr", target="t.png").target == Path("t.png")
    assert stages.QcConfig(slide="a.svs", output="o").backend is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.overlap = 1000  # a config is checked once: it cannot change afterwards unchecked
    assert dataclasses.replace(config, overlap=1).overlap == 1
    with pytest.raises(InvalidInputError, match="^overlap "):
        dataclasses.replace(config, overlap=64)


def test_batch_options_are_the_fields_but_the_slide_output_and_readers():
    for config, left_out in (
        (stages.TileConfig, {"slide", "output", "readers"}),
        (stages.NormalizeConfig, {"input", "output"}),
        (stages.QcConfig, {"slide", "output"}),
    ):
        fields = [field.name for field in dataclasses.fields(config)]
        assert list(config.batch_options()) == [name for name in fields if name not in left_out]
    assert list(stages.QcConfig.batch_options()) == ["backend", "mpp_override"]


def test_batch_options_convert_manifest_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real.geojson").write_text("{}")
    (tmp_path / "link.geojson").symlink_to(tmp_path / "real.geojson")
    convert = stages.TileConfig.batch_options()
    cells = {
        "mpp": "0.25",
        "level": "2",
        "tile_size": "256",
        "overlap": "16",
        "tissue_threshold": "0.5",
        "annotations": "link.geojson",
        "label_map": "Tumor=1",
        "strict": " Yes",
        "backend": "tiffslide",
        "mpp_override": "0.2527",
        "overwrite": "0",
        "qc": "off",
    }
    options = {name: convert[name](text) for name, text in cells.items()}
    assert options == {
        "mpp": 0.25,
        "level": 2,
        "tile_size": 256,
        "overlap": 16,
        "tissue_threshold": 0.5,
        "annotations": tmp_path / "real.geojson",
        "label_map": "Tumor=1",
        "strict": True,
        "backend": "tiffslide",
        "mpp_override": 0.2527,
        "overwrite": False,
        "qc": "off",
    }
    assert options["annotations"].is_absolute()
    config = stages.TileConfig(slide="a.svs", output="a.zarr", **options)
    assert (config.tile_size, config.strict, config.annotations) == (256, True, tmp_path / "real.geojson")
    assert [convert["strict"](text) for text in ("true", "FALSE", "yes", "no", "1", "0", True)] == [
        True,
        False,
        True,
        False,
        True,
        False,
        True,
    ]
    for name, text, message in (
        ("strict", "maybe", "must be true or false"),
        ("mpp", "0", "must be a positive number"),
        ("mpp_override", "-1", "must be a positive number"),
        ("overlap", "a quarter", "invalid literal"),
    ):
        with pytest.raises(ValueError, match=message):
            convert[name](text)


def test_results_as_json():
    result = stages.TileResult(output=Path("a.zarr"), n_tiles=3, n_written=2, already_complete=False, seconds=0.5)
    assert result.to_json() == {
        "output": "a.zarr",
        "n_tiles": 3,
        "n_written": 2,
        "already_complete": False,
        "seconds": 0.5,
    }
    assert list(stages.NormalizeResult(output=Path("n.zarr"), n_tiles=3, method="macenko", device="cpu").to_json()) == [
        "output",
        "n_tiles",
        "method",
        "device",
    ]
