"""Library errors name the parameter a Python caller passed (``overlap``), not a CLI flag; they keep
it (``parameter``) through pickling, as a Dask worker's error does."""

from __future__ import annotations

import pickle

import pytest

from wsipipe.errors import InvalidInputError, MppUnknownError, WsipipeError
from wsipipe.grid import validate_tiling
from wsipipe.stages import TileConfig, tile

GOOD = "CMU-1-Small-Region.svs"


def test_a_library_call_names_its_parameters(slides_dir, tmp_path):
    with pytest.raises(InvalidInputError) as raised:
        tile.run(TileConfig(slide=slides_dir / GOOD, output=tmp_path / "t.zarr", tile_size=512, overlap=512))
    error = raised.value
    assert str(error) == "overlap must be at least 0 and less than tile_size (512), got 512"
    assert error.parameter == "overlap" and error.parameters == ("overlap", "tile_size")
    assert error.text({"overlap": "--overlap", "tile_size": "--tile-size"}) == (
        "--overlap must be at least 0 and less than --tile-size (512), got 512"
    )
    assert not (tmp_path / "t.zarr").exists()


def test_an_error_without_a_parameter_is_its_message():
    error = WsipipeError("x.svs: not a slide {overlap}")
    assert str(error) == error.text({"overlap": "--overlap"}) == "x.svs: not a slide {overlap}"
    assert error.parameter is None


def test_parameters_survive_pickling():
    with pytest.raises(InvalidInputError) as raised:
        validate_tiling(256, 0, 1.5)
    copy = pickle.loads(pickle.dumps(raised.value))
    assert type(copy) is InvalidInputError and copy.parameter == "tissue_threshold"
    assert str(copy) == "tissue_threshold must be between 0 and 1, got 1.5"
    assert copy.text({"tissue_threshold": "--tissue-threshold"}).startswith("--tissue-threshold must")
    no_mpp = pickle.loads(pickle.dumps(MppUnknownError("x.svs", level_option=True)))
    assert no_mpp.path == "x.svs" and no_mpp.parameters == ("mpp_override", "level")
    assert str(no_mpp).endswith(
        "pass mpp_override X (µm per pixel at level 0) or level N (tile a pyramid level at its own scale)"
    )
