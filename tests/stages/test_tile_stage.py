"""``stages.tile.run`` on the real slide: the same store as ``wsipipe tile``, and a result that says
what the command prints."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from wsipipe import stages
from wsipipe.cli.main import app
from wsipipe.errors import MppUnknownError
from wsipipe.store import open_tile_store


def _arrays(path):
    store = open_tile_store(path)
    return {
        name: np.asarray(getattr(store, name)[...]) for name in ("tiles", "coords", "tissue_fraction", "tissue_mask")
    }


def test_run_writes_the_store_the_command_writes(slides_dir, tmp_path):
    slide = slides_dir / "CMU-1-Small-Region.svs"
    calls = []
    config = stages.TileConfig(
        slide=slide, output=tmp_path / "api.zarr", tile_size=128, overlap=16, readers=2, qc="off"
    )
    result = stages.tile.run(config, progress=lambda done, total: calls.append((done, total)))
    cli = CliRunner().invoke(
        app,
        [
            "tile",
            str(slide),
            "-o",
            str(tmp_path / "cli.zarr"),
            "--tile-size",
            "128",
            "--overlap",
            "16",
            "--readers",
            "2",
            "--qc",
            "off",
            "-q",
        ],
    )
    assert cli.exit_code == 0, cli.output
    api, command = _arrays(tmp_path / "api.zarr"), _arrays(tmp_path / "cli.zarr")
    assert api.keys() == command.keys() and all(np.array_equal(api[k], command[k]) for k in api)
    assert (
        open_tile_store(tmp_path / "api.zarr").meta["params"] == open_tile_store(tmp_path / "cli.zarr").meta["params"]
    )

    n_tiles = len(api["coords"])
    assert (result.output, result.n_tiles, result.n_written, result.already_complete) == (
        tmp_path / "api.zarr",
        n_tiles,
        n_tiles,
        False,
    )
    assert re.match(
        rf"wrote {n_tiles} tiles to {re.escape(str(tmp_path / 'cli.zarr'))} \({n_tiles} this run, ", cli.output
    )
    assert calls[0] == (0, n_tiles) and calls[-1] == (n_tiles, n_tiles)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls) and len(calls) > 2  # shard by shard
    assert json.loads(json.dumps(result.to_json()))["output"] == str(tmp_path / "api.zarr")

    again = stages.tile.run(config, progress=lambda done, total: calls.append("again"))
    assert (again.n_tiles, again.n_written, again.already_complete) == (n_tiles, 0, True)
    assert calls[-1] != "again"  # a complete store: no progress at all


def test_a_slide_without_mpp_names_both_ways_out(slides_dir, tmp_path):
    config = stages.TileConfig(slide=slides_dir / "TCGA-CR-7395-01A-01-TS1.svs", output=tmp_path / "a.zarr")
    with pytest.raises(MppUnknownError) as caught:
        stages.tile.run(config)
    assert caught.value.parameters == ("mpp_override", "level")
    assert str(caught.value).endswith(
        "the slide records no µm/px; pass mpp_override X (µm per pixel at level 0) "
        "or level N (tile a pyramid level at its own scale)"
    )
    assert not (tmp_path / "a.zarr").exists()
