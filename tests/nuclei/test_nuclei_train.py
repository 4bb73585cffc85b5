"""US-Net training (``wsipipe train --model usnet``) on real CPM-15 images: resume, cross-validation,
the model file, and that ``wsipipe nuclei --model`` runs what it wrote."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.models.io import load_model
from wsipipe.nuclei import stage
from wsipipe.nuclei.data import load_cpm15
from wsipipe.nuclei.train import INSTANCE_GRID, NucleiTrainConfig, calibrate_instances, train_usnet
from wsipipe.stain import ReinhardNormalizer

TINY = {"base": 4, "depth": 3, "anchor_sizes": [[24, 34], [12, 17], [6, 8.5]]}


@pytest.fixture(scope="module")
def nuclei_dir(tmp_path_factory, cpm15_dir):
    """A nuclei folder with four CPM-15 images (the README's magnification table kept whole)."""
    root = tmp_path_factory.mktemp("nuclei") / "nuclei"
    (root / "cpm15").mkdir(parents=True)
    source = cpm15_dir
    shutil.copy(source / "README_challenge.txt", root / "cpm15")
    for name in ("image01", "image02", "image03", "image04"):
        for suffix in (".png", "_inst.png"):
            shutil.copy(source / f"{name}{suffix}", root / "cpm15")
    return root


class _Stop(Exception):
    pass


def test_resumed_training_gives_the_same_weights(nuclei_dir, tmp_path):
    samples = load_cpm15(nuclei_dir / "cpm15")[:2]
    config = NucleiTrainConfig(args=TINY, crop=64, epochs=2, steps_per_epoch=2, batch_size=2, seed=3)
    whole = train_usnet(samples, config)

    def stop_in_second_epoch(info):
        if info["epoch"] == 2:
            raise _Stop

    checkpoint = tmp_path / "run.ckpt"
    with pytest.raises(_Stop):
        train_usnet(samples, config, checkpoint, on_step=stop_in_second_epoch)
    resumed = train_usnet(samples, config, checkpoint, resume=True)
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    other = NucleiTrainConfig(args=TINY, crop=64, epochs=2, steps_per_epoch=2, batch_size=2, seed=4)
    with pytest.raises(Exception, match="other training options"):
        train_usnet(samples, other, checkpoint, resume=True)


def test_train_usnet_cli_cross_validates_and_writes_a_nuclei_model(nuclei_dir, tmp_path):
    model = tmp_path / "nuclei.safetensors"
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(nuclei_dir),
            "--model",
            "usnet",
            "--model-args",
            json.dumps({**TINY, "distance": True}),
            "--tile-size",
            "64",
            "--epochs",
            "1",
            "--patches-per-epoch",
            "4",
            "--batch-size",
            "2",
            "--folds",
            "2",
            "--seed",
            "1",
            "--normalised-view",
            "reinhard",
            "-o",
            str(model),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    bundle = load_model(model)
    meta = bundle.metadata
    # the target is the training images' mean Reinhard statistics, each estimated as inference estimates an input
    estimates = [ReinhardNormalizer().estimate(s.rgb) for s in load_cpm15(nuclei_dir / "cpm15")]
    target = meta["normalised_view"]["target"]
    assert meta["normalised_view"]["method"] == target["method"] == "reinhard"
    assert meta["stain_normalisation"]["method"] == "none"  # the input itself is not replaced
    for key in ("mean", "std"):
        np.testing.assert_allclose(target[key], np.mean([e.array(key) for e in estimates], axis=0), rtol=1e-9)
    assert meta["architecture"] == "usnet" and meta["mpp"] == 0.5 and meta["tile_size"] == 64
    assert meta["args"]["distance"] is True
    assert meta["training"]["seed"] == 1 and len(meta["training"]["data"]["images"]) == 4
    validation = meta["validation"]
    assert sorted(validation["per_image"]) == [f"cpm15/image0{i}" for i in range(1, 5)]
    for key in ("aji", "pq"):
        assert validation[key] == pytest.approx(np.mean(validation[f"fold_{key}"]))
        assert 0 <= validation[key] <= 1
    assert f"AJI {validation['aji']:.4f}" in result.output
    for chosen in [meta["instances"], *validation["fold_instances"]]:  # one per fit, from the whole grid
        assert {key: chosen[key] in values for key, values in INSTANCE_GRID.items()} == dict.fromkeys(
            INSTANCE_GRID, True
        )
    assert len(validation["fold_instances"]) == 2
    assert not list(tmp_path.glob("*.ckpt")) and not list(tmp_path.glob("*.cv.json"))

    out = tmp_path / "run"
    image = nuclei_dir / "cpm15" / "image01.png"
    ran = CliRunner().invoke(
        app, ["nuclei", str(image), "-o", str(out), "--model", str(model), "--mpp-override", "0.5", "--quiet"]
    )
    assert ran.exit_code == 0, ran.output
    summary = json.loads((out / "nuclei.json").read_text())
    assert summary["method"] == f"usnet:{model.name}"
    assert (
        summary["input_stain"] == ReinhardNormalizer().estimate(np.asarray(Image.open(image).convert("RGB"))).to_dict()
    )


def test_train_usnet_refuses_bad_input(nuclei_dir, tmp_path):
    runner = CliRunner()
    base = ["train", "--model", "usnet", "-o", str(tmp_path / "m.safetensors"), "--quiet"]
    data_mpp = runner.invoke(app, [*base, str(nuclei_dir), "--data-mpp", "0.25"])
    assert data_mpp.exit_code == 2 and "nuclei data records its own" in data_mpp.output
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = runner.invoke(app, [*base, str(empty)])
    assert nothing.exit_code == 2 and "no cpm15/ or monuseg_train/ images" in nothing.output
    folds = runner.invoke(app, [*base, str(nuclei_dir), "--folds", "9"])
    assert folds.exit_code == 2 and "only 4 images" in folds.output
    macenko = runner.invoke(app, [*base, str(nuclei_dir), "--normalised-view", "macenko"])
    assert macenko.exit_code == 2 and "--normalised-view 'macenko': expected one of none, reinhard" in macenko.output
    unet = runner.invoke(
        app, ["train", str(nuclei_dir), "-o", str(tmp_path / "u.safetensors"), "--normalised-view", "reinhard"]
    )
    assert unet.exit_code == 2 and "--normalised-view is for --model usnet" in unet.output


def test_calibration_finds_the_cut_that_uncalibrated_outputs_need(nuclei_dir, monkeypatch):
    """Outputs whose nuclei score 0.35 (segmentation) and 0.45 (detection at each centroid) are lost
    at the default cut of 0.5: calibration must choose the grid's lower cuts, and the segmenter of a
    model that records them must use them."""
    from scipy import ndimage

    from wsipipe.metrics.instance import aji
    from wsipipe.models.io import ModelBundle
    from wsipipe.models.usnet import usnet_instances

    samples = load_cpm15(nuclei_dir / "cpm15")[:2]

    def outputs(instances):
        ids = np.unique(instances)[1:]
        centres = np.asarray(ndimage.center_of_mass(instances > 0, instances, ids))[:, ::-1]
        boxes = np.concatenate([centres, np.full((len(ids), 2), 8.0)], axis=1).astype(np.float32)
        return (instances > 0) * 0.35, boxes, np.full(len(ids), 0.45, np.float32)

    by_image = {s.rgb.tobytes(): outputs(s.instances) for s in samples}
    monkeypatch.setattr(stage, "usnet_forward", lambda bundle, views=1, stain=None: lambda rgb: by_image[rgb.tobytes()])
    config = NucleiTrainConfig(args=TINY, crop=64)
    chosen = calibrate_instances(None, config, samples)
    assert chosen["foreground"] == 0.3 and chosen["score_threshold"] in (0.3, 0.4)
    assert "core" not in chosen  # a model without a distance output is not tried on it
    truth = samples[0].instances
    assert aji(truth, usnet_instances(*outputs(truth))) == 0  # the defaults find nothing
    segment = stage.usnet_segmenter(ModelBundle(None, {"instances": chosen}))
    assert aji(truth, segment(samples[0].rgb)) > 0.8
