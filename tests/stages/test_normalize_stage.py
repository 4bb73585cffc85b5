"""``stages.normalize.run`` on a store tiled from the real slide: the same store as ``wsipipe
normalize``, the device note through ``say``, a target's warning as a Python warning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from wsipipe import stages
from wsipipe.cli.main import app
from wsipipe.stain import StainWarning
from wsipipe.store import open_tile_store


@pytest.fixture(scope="module")
def tiles(slides_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiles") / "cmu.zarr"
    stages.tile.run(
        stages.TileConfig(
            slide=slides_dir / "CMU-1-Small-Region.svs", output=path, mpp=1.0, tile_size=256, readers=1, qc="off"
        )
    )
    return path


def test_run_writes_the_store_the_command_writes(tiles, tmp_path):
    calls = []
    config = stages.NormalizeConfig(input=tiles, output=tmp_path / "api.zarr", method="macenko", device="cpu", seed=3)
    result = stages.normalize.run(config, progress=lambda done, total: calls.append((done, total)))
    cli = CliRunner().invoke(
        app,
        [
            "normalize",
            str(tiles),
            "-o",
            str(tmp_path / "cli.zarr"),
            "--method",
            "macenko",
            "--device",
            "cpu",
            "--seed",
            "3",
        ],
    )
    assert cli.exit_code == 0, cli.output
    api, command = open_tile_store(result.output), open_tile_store(tmp_path / "cli.zarr")
    assert np.array_equal(api.tiles[...], command.tiles[...]) and np.array_equal(api.coords[...], command.coords[...])
    assert api.meta["stain"] == command.meta["stain"] and api.meta["params"] == command.meta["params"]
    n_tiles = open_tile_store(tiles).n_tiles
    assert (result.output, result.n_tiles, result.method, result.device) == (
        tmp_path / "api.zarr",
        n_tiles,
        "macenko",
        "cpu",
    )
    # rich wraps the line at the console's width
    assert cli.output.split() == f"{n_tiles} tiles normalised (macenko, cpu) -> {tmp_path / 'cli.zarr'}".split()
    assert calls[-1] == (n_tiles, n_tiles) and all(total == n_tiles for _, total in calls)
    assert result.to_json() == {
        "output": str(tmp_path / "api.zarr"),
        "n_tiles": n_tiles,
        "method": "macenko",
        "device": "cpu",
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU note")
def test_the_device_note_is_said(tiles, tmp_path):
    said = []
    config = stages.NormalizeConfig(input=tiles, output=tmp_path / "n.zarr", method="reinhard")
    assert stages.normalize.run(config, say=said.append).device == "cpu"
    assert said == ["No CUDA GPU found; running on the CPU."]


def test_a_target_that_is_not_he_is_a_python_warning(tiles, tmp_path, data_dir):
    target = data_dir / "stain" / "skimage_ihc.png"
    config = stages.NormalizeConfig(
        input=tiles, output=tmp_path / "n.zarr", target=target, method="macenko", device="cpu"
    )
    with pytest.warns(StainWarning) as caught:
        stages.normalize.run(config)
    messages = [str(warning.message) for warning in caught]
    assert any(m.startswith(f"--target {target}: ") and "probably not H&E" in m for m in messages), messages
    assert open_tile_store(tmp_path / "n.zarr").meta["stain"]["target"]["looks_like_he"] is False


def test_a_bad_target_is_named_as_the_field(tiles, tmp_path):
    from PIL import Image

    from wsipipe.errors import InvalidInputError

    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((64, 64), 120, dtype=np.uint8)).save(grey)
    config = stages.NormalizeConfig(input=tiles, output=tmp_path / "n.zarr", target=grey, device="cpu")
    with pytest.raises(InvalidInputError) as caught:
        stages.normalize.run(config)
    assert caught.value.parameter == "target"
    assert str(caught.value) == f"target {grey}: greyscale image; a colour H&E image is needed"
    assert not (tmp_path / "n.zarr").exists()
