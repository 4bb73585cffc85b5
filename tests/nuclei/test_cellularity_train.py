"""Cellularity regression training (``wsipipe train --model cellularity``) on real CPM-15 crops
scored from their nuclei masks: cross-validation figures, resume, ``--init-from``, bad scores
files, and ``predict`` output that ``evaluate --task cellularity`` scores."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.metrics.pk import prediction_probability
from wsipipe.models import build_model
from wsipipe.models.io import ModelBundle, load_model, model_metadata, save_model
from wsipipe.nuclei.cellularity import crop_grid, predict_cellularity, write_scored_crops
from wsipipe.nuclei.cellularity_train import (
    CellularityTrainConfig,
    cellularity_model_metadata,
    read_scores,
    train_cellularity,
)
from wsipipe.nuclei.data import load_cpm15

TINY = {"seg_encoder": "resnet18", "resnet": "resnet18", "hidden": 16}
TRAIN = [
    "--model",
    "cellularity",
    "--model-args",
    json.dumps(TINY),
    "--tile-size",
    "64",
    "--epochs",
    "1",
    "--patches-per-epoch",
    "4",
    "--batch-size",
    "2",
    "--device",
    "cpu",
    "--quiet",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny networks run fastest on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, cpm15_dir):
    """Eight 64 px crops of four CPM-15 images with scores.csv: the nuclei area of each crop."""
    cpm15 = tmp_path_factory.mktemp("cpm15")
    source = cpm15_dir
    shutil.copy(source / "README_challenge.txt", cpm15)
    for name in ("image01", "image02", "image03", "image04"):
        for suffix in (".png", "_inst.png"):
            shutil.copy(source / f"{name}{suffix}", cpm15)
    out = tmp_path_factory.mktemp("scored")
    samples = load_cpm15(cpm15)
    rows = write_scored_crops(samples, out, crop=64, per_image=2)
    return out, rows, samples


def test_scores_are_the_nuclei_area_fraction_of_each_crop(scored):
    out, rows, sources = scored
    assert len(rows) == 8 and len({round(score, 6) for _, score in rows}) > 1
    instances = {s.name.replace("/", "_"): s.instances for s in sources}
    for name, score in rows:  # the whole crop is tumour, so every nucleus in it counts
        image, y, x = re.fullmatch(r"(.+)_y(\d+)_x(\d+)\.png", name).groups()
        crop = instances[image][int(y) : int(y) + 64, int(x) : int(x) + 64]
        assert score == pytest.approx((crop > 0).mean()), name
    samples = read_scores(out / "scores.csv")
    assert [s.name for s in samples] == [name for name, _ in rows]
    assert [s.group for s in samples] == [
        re.sub(r"_y\d+_x\d+\.png$", "", n).replace("cpm15_", "cpm15/") for n, _ in rows
    ]
    assert all(s.image.shape == (64, 64, 3) for s in samples)
    assert [s.score for s in samples] == pytest.approx([score for _, score in rows], abs=1e-6)


def test_train_cross_validates_then_predict_is_scored_by_evaluate(scored, tmp_path):
    out, rows, _ = scored
    model = tmp_path / "cellularity.safetensors"
    runner = CliRunner()
    result = runner.invoke(
        app, ["train", str(out / "scores.csv"), *TRAIN, "--folds", "2", "--seed", "1", "-o", str(model)]
    )
    assert result.exit_code == 0, result.output
    meta = load_model(model).metadata
    assert meta["architecture"] == "cellularity" and meta["tile_size"] == 64 and meta["args"]["hidden"] == 16
    assert meta["training"]["seed"] == 1 and meta["training"]["data"]["images"] == [name for name, _ in rows]
    validation = meta["validation"]
    per_image = validation["per_image"]
    assert sorted(per_image) == sorted(name for name, _ in rows)
    truth = [v["score"] for v in per_image.values()]
    predicted = [v["prediction"] for v in per_image.values()]
    assert validation["mae"] == pytest.approx(np.mean(np.abs(np.subtract(predicted, truth))))
    assert validation["pk"] == pytest.approx(prediction_probability(truth, predicted))
    assert len(validation["fold_mae"]) == 2
    source = {s.name: s.group for s in read_scores(out / "scores.csv")}
    fold_sources = [{source[name] for name in fold} for fold in validation["fold_images"]]
    assert (
        sorted(len(f) for f in fold_sources) == [2, 2] and not fold_sources[0] & fold_sources[1]
    )  # whole images per fold
    assert sorted(n for fold in validation["fold_images"] for n in fold) == sorted(source)
    assert f"MAE {validation['mae']:.4f}" in result.output
    assert not list(tmp_path.glob("*.ckpt")) and not list(tmp_path.glob("*.cv.json"))

    images = [str(out / name) for name, _ in rows]
    printed = runner.invoke(app, ["predict", str(model), images[0], "--device", "cpu"])
    assert printed.exit_code == 0 and "cellularity 0." in printed.output, printed.output
    predictions = out / "predictions.csv"
    written = runner.invoke(app, ["predict", str(model), *images, "-o", str(predictions), "--device", "cpu"])
    assert written.exit_code == 0, written.output
    with open(predictions, newline="") as handle:
        scores = {row["image"]: float(row["cellularity"]) for row in csv.DictReader(handle)}
    assert list(scores) == [name for name, _ in rows]  # named as scores.csv names them
    assert all(0 < s < 1 for s in scores.values())
    evaluated = runner.invoke(app, ["evaluate", "--task", "cellularity", str(predictions), str(out / "scores.csv")])
    assert evaluated.exit_code == 0, evaluated.output
    pk = prediction_probability([score for _, score in rows], [scores[name] for name, _ in rows])
    assert f"PK {pk:.4f} over 8 cases" in evaluated.output


def test_prediction_is_the_mean_over_a_grid_of_crops(scored):
    config = CellularityTrainConfig(args=TINY, tile_size=64)
    torch.manual_seed(0)
    bundle = ModelBundle(build_model("cellularity", 1, TINY).eval(), cellularity_model_metadata(config))
    rgb = np.concatenate(
        [np.concatenate([s.image, s.image[:, :40]], axis=1) for s in read_scores(scored[0] / "scores.csv")[:2]]
    )  # 128 x 104
    assert crop_grid(128, 64) == [0, 64] and crop_grid(104, 64) == [0, 40] and crop_grid(50, 64) == [0]
    corners = [(y, x) for y in (0, 64) for x in (0, 40)]
    with torch.inference_mode():
        x = torch.as_tensor(np.stack([rgb[y : y + 64, x : x + 64] for y, x in corners])).permute(0, 3, 1, 2) / 255
        mean, std = (torch.tensor(bundle.input_normalisation[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
        expected = float(bundle.model((x - mean) / std).mean())
    assert predict_cellularity(bundle, rgb, batch_size=3) == pytest.approx(expected, abs=1e-6)
    assert 0 < predict_cellularity(bundle, rgb[:50, :30]) < 1  # mirrored out to one tile


class _Stop(Exception):
    pass


def test_resumed_training_gives_the_same_weights(scored, tmp_path):
    samples = read_scores(scored[0] / "scores.csv")[:4]
    config = CellularityTrainConfig(args=TINY, tile_size=64, epochs=2, steps_per_epoch=2, batch_size=2, seed=3)
    whole = train_cellularity(samples, config)

    def stop_in_second_epoch(info):
        if info["epoch"] == 2:
            raise _Stop

    checkpoint = tmp_path / "run.ckpt"
    with pytest.raises(_Stop):
        train_cellularity(samples, config, checkpoint, on_step=stop_in_second_epoch)
    resumed = train_cellularity(samples, config, checkpoint, resume=True)
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    other = CellularityTrainConfig(args=TINY, tile_size=64, epochs=2, steps_per_epoch=2, batch_size=2, seed=4)
    with pytest.raises(Exception, match="other training options"):
        train_cellularity(samples, other, checkpoint, resume=True)


def test_init_from_copies_the_segmentation_encoder(scored, tmp_path):
    torch.manual_seed(7)
    segmentation = build_model("deeplabv3plus", 2, {"encoder": "resnet18"})
    seg_file = save_model(
        tmp_path / "seg.safetensors",
        segmentation,
        model_metadata("deeplabv3plus", {"encoder": "resnet18"}, ["bg", "tumour"], 1.0, 64),
    )
    model = tmp_path / "cellularity.safetensors"
    runner = CliRunner()
    # lr 0: training leaves the copied weights as they are (batch-norm statistics still move)
    result = runner.invoke(
        app,
        ["train", str(scored[0] / "scores.csv"), *TRAIN, "--lr", "0", "--init-from", str(seg_file), "-o", str(model)],
    )
    assert result.exit_code == 0, result.output
    encoder = load_model(model).model.seg_encoder
    fresh = build_model("cellularity", 1, TINY).seg_encoder
    for name, parameter in segmentation.encoder.named_parameters():
        assert torch.equal(encoder.get_parameter(name), parameter.detach()), name
    assert not all(torch.equal(fresh.get_parameter(n), p.detach()) for n, p in segmentation.encoder.named_parameters())

    other_encoder = save_model(
        tmp_path / "seg34.safetensors",
        segmentation,
        model_metadata("deeplabv3plus", {"encoder": "resnet34"}, ["bg", "tumour"], 1.0, 64),
    )
    for init, message in [
        (model, "not deeplabv3plus"),
        (other_encoder, "encoder resnet34"),
        (tmp_path / "none.safetensors", "no such model file"),
    ]:
        refused = runner.invoke(
            app,
            [
                "train",
                str(scored[0] / "scores.csv"),
                *TRAIN,
                "--init-from",
                str(init),
                "-o",
                str(tmp_path / "other.safetensors"),
            ],
        )
        assert refused.exit_code == 2 and message in refused.output, refused.output
        assert len(refused.output.strip().splitlines()) == 1
    assert not (tmp_path / "other.safetensors").exists()


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        (None, "no such scores file"),
        ("file,cellularity\na.png,0.5\n", "needs an 'image' column"),
        ("image,cellularity\n{image},1.5\n", "outside [0, 1]"),
        ("image,cellularity\n../{image},0.5\n", "is not a path inside"),
    ],
)
def test_bad_scores_files_are_one_line_usage_errors(scored, tmp_path, csv_text, message):
    (tmp_path / "data").mkdir()
    scores = tmp_path / "data" / "scores.csv"
    name = scored[1][0][0]
    shutil.copy(scored[0] / name, tmp_path / name)  # outside data/: reachable only by escaping it
    shutil.copy(scored[0] / name, tmp_path / "data" / name)
    if csv_text is not None:
        scores.write_text(csv_text.format(image=name))
    result = CliRunner().invoke(app, ["train", str(scores), *TRAIN, "-o", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.safetensors").exists()
