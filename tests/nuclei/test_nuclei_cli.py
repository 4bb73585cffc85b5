"""``wsipipe nuclei`` end to end on a real CPM-15 image: outputs agree with each other and the stage."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.nuclei.classical import Calibration, ClassicalParams, segment_nuclei
from wsipipe.nuclei.data import read_rgb, resample


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    """image14 (40x, 0.25 µm/px) with the left half of it marked as tumour."""
    tmp = tmp_path_factory.mktemp("nuclei")
    image = data_dir / "nuclei" / "cpm15" / "image14.png"
    raw = read_rgb(image)
    mask = np.zeros(raw.shape[:2], np.uint8)
    mask[:, : raw.shape[1] // 2] = 255
    Image.fromarray(mask).resize((raw.shape[1] // 4, raw.shape[0] // 4), Image.NEAREST).save(tmp / "tumour.png")
    out = tmp / "out"
    result = CliRunner().invoke(
        app,
        ["nuclei", str(image), "-o", str(out), "--mpp-override", "0.25", "--tumour-mask", str(tmp / "tumour.png"), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    return raw, out, result.output


def _rows(out):
    with open(out / "nuclei.csv") as handle:
        return list(csv.DictReader(handle))


def test_outputs_agree(run):
    raw, out, printed = run
    summary = json.loads((out / "nuclei.json").read_text())
    rows = _rows(out)
    features = json.loads((out / "nuclei.geojson").read_text())["features"]
    labels = zarr.open_array(str(out / "labels.zarr"), mode="r")[:]
    n = summary["nuclei_count"]
    assert n > 50 and f"{n} nuclei" in printed
    assert len(rows) == len(features) == labels.max() == n
    assert sorted(int(r["id"]) for r in rows) == list(range(1, n + 1))
    assert all(f["properties"]["objectType"] == "detection" for f in features)
    # level-0 centroids: working pixels (0.5 µm) are 2 level-0 pixels (0.25 µm) wide
    for row in rows[:: max(1, n // 20)]:
        ys, xs = np.nonzero(labels == int(row["id"]))
        assert float(row["centroid_x"]) == pytest.approx((xs.mean() + 0.5) * 2, abs=0.01)
        assert float(row["centroid_y"]) == pytest.approx((ys.mean() + 0.5) * 2, abs=0.01)
        assert float(row["area_um2"]) == pytest.approx(ys.size * 0.25, abs=1e-3)


def test_tumour_flags_and_cellularity(run):
    raw, out, _ = run
    summary = json.loads((out / "nuclei.json").read_text())
    rows = _rows(out)
    half = raw.shape[1] // 2  # level-0 column where the tumour mask ends
    for row in rows:
        x = float(row["centroid_x"])
        if abs(x - half) > 4:  # away from the mask edge (its nearest-neighbour sampling)
            assert row["in_tumour"] == str(int(x < half)), row
    flagged = [r for r in rows if r["in_tumour"] == "1"]
    assert summary["tumour_nuclei_count"] == len(flagged) > 10
    malignant_mm2 = sum(float(r["area_um2"]) for r in flagged) / 1e6
    assert summary["cellularity"] == pytest.approx(malignant_mm2 / summary["tumour_mm2"], rel=1e-3)
    assert 0 < summary["cellularity"] < 1
    assert summary["nuclei_per_mm2_tumour"] == pytest.approx(len(flagged) / summary["tumour_mm2"], rel=1e-3)  # areas rounded to 1e-6 mm²
    assert summary["tumour_mm2"] < summary["tissue_mm2"]
    assert sum(t["nuclei_count"] for t in summary["tiles"]) == summary["nuclei_count"]


def test_same_nuclei_as_the_whole_image(run):
    raw, out, _ = run
    summary = json.loads((out / "nuclei.json").read_text())
    calibration = Calibration(np.asarray(summary["calibration"]["stain_matrix"]), summary["calibration"]["threshold"])
    rgb, _ = resample(raw, None, 0.25, 0.5)
    whole = segment_nuclei(rgb, 0.5, calibration, ClassicalParams())
    labels = zarr.open_array(str(out / "labels.zarr"), mode="r")[:]
    assert np.array_equal(labels > 0, whole > 0)
    assert labels.max() == whole.max()


def test_image_without_mpp_warns(tmp_path, data_dir):
    image = data_dir / "nuclei" / "cpm15" / "image15.png"
    result = CliRunner().invoke(app, ["nuclei", str(image), "-o", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "--mpp-override" in result.output
    assert (tmp_path / "o" / "nuclei.csv").exists()
    assert not list((tmp_path / "o").glob(".*partial"))


def test_usage_errors(tmp_path, data_dir):
    image = data_dir / "nuclei" / "cpm15" / "image15.png"
    runner = CliRunner()
    missing = runner.invoke(app, ["nuclei", str(tmp_path / "none.png"), "-o", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    both = runner.invoke(app, ["nuclei", str(image), "-o", str(tmp_path / "o"), "--model", "m", "--classical"])
    assert both.exit_code == 2 and "choose one" in both.output
    model = runner.invoke(app, ["nuclei", str(image), "-o", str(tmp_path / "o"), "--model", str(image)])
    assert model.exit_code == 2 and "not a safetensors model" in model.output
    mask = runner.invoke(app, ["nuclei", str(image), "-o", str(tmp_path / "o"), "--tumour-mask", str(image) + "x"])
    assert mask.exit_code == 2 and "--tumour-mask" in mask.output
    assert not (tmp_path / "o").exists()


def test_help_through_python_m():
    result = subprocess.run([sys.executable, "-m", "wsipipe", "nuclei", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--mpp-override" in result.stdout and "cellularity" in result.stdout


def test_usnet_model_file_runs_end_to_end(tmp_path, data_dir):
    """An untrained tiny US-Net saved as a model file: the plumbing, not the accuracy."""
    import torch

    from wsipipe.models import build_model
    from wsipipe.models.io import model_metadata, save_model

    args = {"base": 4, "depth": 3, "anchor_sizes": [[24, 34], [12, 17], [6, 8.5]]}
    torch.manual_seed(0)
    network = build_model("usnet", 1, args)
    with torch.no_grad():
        network.segmentation.bias.fill_(3.0)  # call most pixels nucleus so there is something to count
    path = save_model(tmp_path / "nuclei.safetensors", network, model_metadata("usnet", args, ["nucleus"], 0.5, 256))
    image = data_dir / "nuclei" / "cpm15" / "image14.png"
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["nuclei", str(image), "-o", str(out), "--model", str(path), "--mpp-override", "0.25", "--device", "cpu", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "nuclei.json").read_text())
    labels = zarr.open_array(str(out / "labels.zarr"), mode="r")[:]
    assert summary["method"] == "usnet:nuclei.safetensors"
    assert summary["nuclei_count"] == labels.max() == len(_rows(out)) > 0
    wrong = save_model(tmp_path / "seg.safetensors", build_model("plain-unet", 2, {"base": 4}),
                       model_metadata("plain-unet", {"base": 4}, ["a", "b"], 0.5, 256))
    refused = CliRunner().invoke(app, ["nuclei", str(image), "-o", str(out), "--model", str(wrong), "--device", "cpu"])
    assert refused.exit_code == 2 and "not a nuclei (usnet) model" in refused.output


def test_a_folder_another_run_writes_to_is_refused(tmp_path, data_dir, hold_folder_lock):
    image = data_dir / "nuclei" / "cpm15" / "image01.png"
    outdir = tmp_path / "out"
    outdir.mkdir()
    hold_folder_lock(outdir)
    result = CliRunner().invoke(app, ["nuclei", str(image), "-o", str(outdir), "--mpp-override", "0.5", "--quiet"])
    assert result.exit_code == 1 and f"{outdir}: another wsipipe run is writing to this folder" in result.output
    assert "Traceback" not in result.output and sorted(p.name for p in outdir.iterdir()) == [".wsipipe.lock"]


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, data_dir):
    image = data_dir / "nuclei" / "cpm15" / "image01.png"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = CliRunner().invoke(app, ["nuclei", str(image), "-o", str(blocker / "out"), "--mpp-override", "0.5"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().endswith(f"{blocker / 'out'}: cannot create the output folder (Not a directory)")
