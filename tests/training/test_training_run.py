import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.errors import InvalidInputError
from wsipipe.models.io import load_model
from wsipipe.training.data import (
    Dataset,
    LabelledImage,
    find_pairs,
    read_mask,
    read_pairs,
    regroup,
    split_folds,
    split_holdout,
)
from wsipipe.training.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, lung_dir):
    """Two 192 x 192 crops of real lung images with their masks."""
    root = tmp_path_factory.mktemp("lungsmall")
    for sub in ("images", "masks"):
        (root / sub).mkdir()
    for name in ("lung_01", "lung_02"):
        for sub in ("images", "masks"):
            img = Image.open(lung_dir / sub / f"{name}.png")
            img.crop((400, 400, 592, 592)).save(root / sub / f"{name}.png")
    return root


def _config(**kw):
    base = dict(
        architecture="plain-unet",
        args={"base": 4},
        classes=["background", "tumour"],
        tile_size=64,
        epochs=2,
        patches_per_epoch=4,
        batch_size=2,
        seed=5,
    )
    return TrainConfig(**{**base, **kw})


def test_binary_masks_and_folds(small_data):
    mask = read_mask(small_data / "masks" / "lung_01.png")
    assert set(np.unique(mask)) <= {0, 1} and mask.max() == 1
    folds = split_folds([f"img{i}" for i in range(7)], 3, seed=0)
    assert sorted(sum(folds, [])) == list(range(7)) and sorted(map(len, folds)) == [2, 2, 3]


def test_splits_never_separate_a_slide():
    groups = ["a"] * 5 + ["b"] * 2 + ["c"] * 7 + ["d"] + ["e"] * 3
    folds = split_folds(groups, 2, seed=1)
    assert sorted(sum(folds, [])) == list(range(len(groups)))
    fold_groups = [{groups[i] for i in fold} for fold in folds]
    assert not fold_groups[0] & fold_groups[1] and sorted(map(len, fold_groups)) == [2, 3]
    train_idx, val_idx = split_holdout(groups, 0.4, seed=1)
    assert sorted(train_idx + val_idx) == list(range(len(groups)))
    assert len({groups[i] for i in val_idx}) == 2 and not {groups[i] for i in val_idx} & {groups[i] for i in train_idx}
    with pytest.raises(InvalidInputError, match="number of images or slides"):
        split_folds(groups, 6, seed=0)


def _tiny_dataset(names):
    pixels, mask = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)
    return Dataset([LabelledImage(n, pixels, mask) for n in names], None, "images")


def test_a_groups_csv_keeps_overlapping_images_in_one_fold(tmp_path):
    names = [f"lung_0{i}" for i in range(1, 8)]
    csv = tmp_path / "groups.csv"
    csv.write_text("image,group\nlung_04.png,slide-a\nlung_05,slide-a\n")
    dataset = regroup(_tiny_dataset(names), csv)
    assert [it.source for it in dataset.items] == names
    assert dataset.groups == ["lung_01", "lung_02", "lung_03", "slide-a", "slide-a", "lung_06", "lung_07"]
    for seed in range(10):
        folds = split_folds(dataset.groups, 3, seed)
        assert sorted(sum(folds, [])) == list(range(7))
        assert [k for k, fold in enumerate(folds) if 3 in fold] == [k for k, fold in enumerate(folds) if 4 in fold]
    with pytest.raises(InvalidInputError, match="7 images or slides|number of images or slides"):
        split_folds(dataset.groups, 7, 0)  # six groups now


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,slide\nlung_01,a\n", "needs columns 'image' and 'group' \\(has name, slide\\)"),
        ("image,group\nlung_09,a\n", "'lung_09' is not one of the data's images or slides"),
        ("image,group\nlung_01,\n", "'lung_01' has an empty group"),
    ],
)
def test_bad_groups_csvs_are_refused(tmp_path, text, message):
    csv = tmp_path / "groups.csv"
    csv.write_text(text)
    with pytest.raises(InvalidInputError, match=message):
        regroup(_tiny_dataset(["lung_01", "lung_02"]), csv)


@pytest.fixture()
def one_thread():
    """One intra-op thread: faster on a shared machine and the same order of float sums in each run."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_interrupted_training_resumes_to_the_same_weights(small_data, tmp_path, one_thread):
    items = read_pairs(find_pairs(small_data))
    reference = train(_config(), items[:1], items[1:])

    class Stop(Exception):
        pass

    def stop_in_epoch_two(info):
        if info["epoch"] == 2:
            raise Stop

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Stop):
        train(_config(), items[:1], items[1:], ckpt, on_step=stop_in_epoch_two)
    assert ckpt.is_file()
    resumed = train(_config(), items[:1], items[1:], ckpt, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"] == reference["history"]
    for key, value in reference["state_dict"].items():
        assert torch.allclose(value.float(), resumed["state_dict"][key].float(), atol=1e-6), key


def test_without_selection_the_last_epoch_is_kept_and_the_curve_recorded(small_data, one_thread):
    """Cross-validation folds train this way: their held-out images must not pick the epoch."""
    items = read_pairs(find_pairs(small_data))
    last = train(_config(epochs=3), items[:1], [])
    curve = train(_config(epochs=3), items[:1], items[1:], select_best=False)
    assert curve["best"]["epoch"] == 3 and all("val_miou" in h for h in curve["history"])
    for key, value in last["state_dict"].items():
        assert torch.equal(value, curve["state_dict"][key]), key


def test_train_cli_writes_a_loadable_model(small_data, tmp_path):
    out = tmp_path / "m.safetensors"
    args = [
        "train",
        str(small_data),
        "-o",
        str(out),
        "--model",
        "plain-unet",
        "--model-args",
        '{"base": 4}',
        "--classes",
        "background,tumour",
        "--tile-size",
        "64",
        "--epochs",
        "1",
        "--patches-per-epoch",
        "4",
        "--batch-size",
        "2",
        "--val-fraction",
        "0.5",
        "--seed",
        "7",
        "--device",
        "cpu",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    bundle = load_model(out)
    meta = bundle.metadata
    assert meta["training"]["seed"] == 7 and meta["architecture"] == "plain-unet"
    assert len(meta["training"]["data"]["images"]) == 1 and len(meta["validation"]["images"]) == 1
    assert 0 <= meta["validation"]["miou"] <= 1
    assert not list(tmp_path.glob("*.ckpt"))  # checkpoint removed once the model is written


def test_train_cli_records_groups_and_never_splits_one(small_data, tmp_path):
    groups = tmp_path / "groups.csv"
    groups.write_text("image,group\nlung_01,case-7\nlung_02,case-7\n")
    out = tmp_path / "m.safetensors"
    args = [
        "train",
        str(small_data),
        "-o",
        str(out),
        "--model",
        "plain-unet",
        "--model-args",
        '{"base": 4}',
        "--classes",
        "background,tumour",
        "--tile-size",
        "64",
        "--epochs",
        "1",
        "--patches-per-epoch",
        "2",
        "--batch-size",
        "2",
        "--val-fraction",
        "0.5",
        "--groups",
        str(groups),
        "--device",
        "cpu",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = load_model(out).metadata["training"]["data"]
    assert data["groups"] == {"lung_01": "case-7", "lung_02": "case-7"}
    assert data["images"] == ["lung_01", "lung_02"]  # one group: nothing can be held out
    result = CliRunner().invoke(
        app, [*args[:2], "-o", str(tmp_path / "n.safetensors"), "--model", "usnet", "--groups", str(groups)]
    )
    assert result.exit_code == 2 and "--groups is for segmentation models" in result.output


def test_bad_data_dirs_are_usage_errors(small_data, tmp_path):
    runner = CliRunner()
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    result = runner.invoke(app, ["train", str(empty), "-o", str(tmp_path / "x.safetensors"), "--quiet"])
    assert result.exit_code == 2 and "no images" in result.output
    result = runner.invoke(app, ["train", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 2 and "images/ and masks/" in result.output
    mismatched = tmp_path / "mismatched"
    shutil.copytree(small_data, mismatched)
    (mismatched / "masks" / "lung_02.png").rename(mismatched / "masks" / "lung_03.png")
    result = runner.invoke(app, ["train", str(mismatched), "-o", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 2 and "do not match by name: lung_02, lung_03" in result.output
    result = runner.invoke(app, ["train", str(small_data), "-o", str(tmp_path / "x.safetensors"), "--folds", "5"])
    assert result.exit_code == 2 and "--folds 5" in result.output
