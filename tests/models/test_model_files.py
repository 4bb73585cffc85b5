import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.errors import ModelError
from wsipipe.models import build_model
from wsipipe.models.io import load_model, model_metadata, read_metadata, save_model

ARGS = {"base": 4}


@pytest.fixture()
def model_file(tmp_path):
    torch.manual_seed(1)
    model = build_model("attention-unet", 2, ARGS).eval()
    meta = model_metadata("attention-unet", ARGS, ["background", "tumour"], 8.0, 64, training={"seed": 3})
    path = save_model(tmp_path / "m.safetensors", model, meta)
    return path, model


def test_round_trip_gives_identical_outputs(model_file):
    path, model = model_file
    bundle = load_model(path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), bundle.model(x))
    assert bundle.classes == ["background", "tumour"] and bundle.mpp == 8.0 and bundle.tile_size == 64
    assert bundle.metadata["training"]["seed"] == 3
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any other output


def test_fp16_file_is_half_the_size_and_close(tmp_path, model_file):
    path, model = model_file
    half = save_model(tmp_path / "h.safetensors", model, read_metadata(path), half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(torch.softmax(model(x), 1), torch.softmax(load_model(half).model(x), 1), atol=2e-2)
    assert read_metadata(half)["weights_dtype"] == "float16"


def test_refuses_pickle_corrupt_foreign_and_missing(tmp_path, model_file):
    path, model = model_file
    pickled = tmp_path / "p.safetensors"
    torch.save(model.state_dict(), pickled)  # a pickle-based file under a safetensors name
    with pytest.raises(ModelError, match="not a safetensors model file"):
        load_model(pickled)
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(print))
    with pytest.raises(ModelError, match="not a safetensors model file"):
        load_model(evil)
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError):
        load_model(truncated)
    foreign = tmp_path / "f.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"other": "x"})
    with pytest.raises(ModelError, match="not a wsipipe model"):
        load_model(foreign)
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path / "absent.safetensors")


def test_weights_not_matching_architecture(tmp_path, model_file):
    path, _ = model_file
    meta = read_metadata(path)
    other = build_model("plain-unet", 2, {"base": 4})
    wrong = tmp_path / "w.safetensors"
    save_model(wrong, other, meta)  # metadata says attention-unet, weights lack the gates
    with pytest.raises(ModelError, match="weights do not match attention-unet"):
        load_model(wrong)


def test_models_info_cli(model_file, tmp_path):
    path, _ = model_file
    result = CliRunner().invoke(app, ["models", "info", str(path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["architecture"] == "attention-unet"
    bad = tmp_path / "bad.safetensors"
    bad.write_text("nope")
    proc = subprocess.run([sys.executable, "-m", "wsipipe", "models", "info", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a safetensors model file" in proc.stderr
