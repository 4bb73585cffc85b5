import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage.filters import threshold_otsu
from typer.testing import CliRunner

import wsipipe
from wsipipe.cli.main import app
from wsipipe.metrics.semantic import ConfusionMatrix, mean_iou

BUNDLED = Path(wsipipe.__file__).parent / "resources" / "models" / "tumour-unet.safetensors"


@pytest.fixture(scope="module")
def one_image(tmp_path_factory, lung_dir) -> Path:
    root = tmp_path_factory.mktemp("lung5")
    for sub in ("images", "masks"):
        (root / sub).mkdir()
        (root / sub / "lung_05.png").symlink_to(lung_dir / sub / "lung_05.png")
    return root


def _tissue_baseline_miou(image: np.ndarray, truth: np.ndarray) -> float:
    saturation = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1]
    tissue = (saturation > threshold_otsu(saturation)).astype(int)
    return mean_iou(ConfusionMatrix(2).update(tissue, truth).counts)


def test_bundled_model_is_small_and_described():
    assert BUNDLED.stat().st_size <= 20 * 2**20
    result = CliRunner().invoke(app, ["models", "info", str(BUNDLED), "--json"])
    meta = json.loads(result.output)
    assert meta["classes"] == ["background", "tumour"]
    assert meta["training"]["seed"] == 0 and meta["training"]["command"].startswith("wsipipe train")
    assert meta["training"]["data"]["data_mpp_assumed"] is True


def test_evaluate_and_predict_agree_and_beat_the_tissue_baseline(one_image, tmp_path):
    out_json = tmp_path / "eval.json"
    result = CliRunner().invoke(
        app, ["evaluate", str(BUNDLED), "--data", str(one_image), "--json", str(out_json), "--quiet", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert "lung_05" in result.output and "ALL (pooled)" in result.output
    report = json.loads(out_json.read_text())
    assert set(report) >= {"miou", "accuracy", "kappa", "iou", "dice", "confusion", "per_image"}
    assert np.array(report["confusion"]).sum() == 1024 * 1024

    mask_png = tmp_path / "pred.png"
    result = CliRunner().invoke(
        app,
        ["predict", str(BUNDLED), str(one_image / "images" / "lung_05.png"), "-o", str(mask_png), "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    predicted = np.array(Image.open(mask_png))
    assert predicted.shape == (1024, 1024) and set(np.unique(predicted)) <= {0, 255}
    image = np.array(Image.open(one_image / "images" / "lung_05.png").convert("RGB"))
    truth = np.array(Image.open(one_image / "masks" / "lung_05.png")) // 255
    # independent check of the reported figure from the written mask
    model_miou = mean_iou(ConfusionMatrix(2).update(predicted // 255, truth).counts)
    assert model_miou == pytest.approx(report["miou"], abs=1e-9)
    assert model_miou > _tissue_baseline_miou(image, truth) + 0.1  # baseline 0.38, model 0.76 here


def test_missing_or_corrupt_model_and_bad_data(one_image, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(tmp_path / "none.safetensors"), "--data", str(one_image)])
    assert result.exit_code == 2 and "no such model file" in result.output
    corrupt = tmp_path / "c.safetensors"
    corrupt.write_bytes(BUNDLED.read_bytes()[:1000])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsipipe",
            "predict",
            str(corrupt),
            str(one_image / "images" / "lung_05.png"),
            "-o",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "not a safetensors model file" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.png").exists()
    result = runner.invoke(app, ["evaluate", str(BUNDLED), "--data", str(tmp_path)])
    assert result.exit_code == 2 and "images/ and masks/" in result.output
    result = runner.invoke(app, ["evaluate", str(BUNDLED), "--data", str(one_image), "--overlap", "128", "--quiet"])
    assert (
        result.exit_code == 2
        and "--overlap 128: must be at least 0 and less than half the tile (256 px)" in result.output
    )
    result = runner.invoke(
        app,
        [
            "predict",
            str(BUNDLED),
            str(one_image / "images" / "lung_05.png"),
            "-o",
            str(tmp_path / "y.png"),
            "--overlap",
            "300",
        ],
    )
    assert result.exit_code == 2 and "--overlap 300" in result.output and not (tmp_path / "y.png").exists()
