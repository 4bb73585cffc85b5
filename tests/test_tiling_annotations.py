"""``wsipipe tile --annotations``: a label mask and label fractions per tile, in the store."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.models.io import read_metadata
from wsipipe.store import open_tile_store

runner = CliRunner()
SLIDES = ("TCGA-21-5784-01Z-00-DX1", "TCGA-21-5786-01Z-00-DX1")
# MoNuSeg images record no µm/px; 0.25 is close to the XML's MicronsPerPixel and fixes the scale.
TILE_ARGS = ["--mpp-override", "0.25", "--mpp", "0.5", "--tile-size", "64", "--tissue-threshold", "0", "-q"]


@pytest.fixture(scope="module")
def monuseg(tmp_path_factory, monuseg_dir):
    """Two MoNuSeg images with their Aperio XML, copied so a test may change an XML."""
    folder = tmp_path_factory.mktemp("monuseg")
    for name in SLIDES:
        for suffix in (".tif", ".xml"):
            shutil.copy(monuseg_dir / f"{name}{suffix}", folder)
    return folder


@pytest.fixture(scope="module")
def stores(monuseg, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores")
    for name in SLIDES:
        args = [
            "tile",
            monuseg / f"{name}.tif",
            "-o",
            out / f"{name}.zarr",
            "--annotations",
            monuseg / f"{name}.xml",
            "--label-map",
            "Annotation 1=1",
            "--workers",
            "2",
            *TILE_ARGS,
        ]
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    return out


def test_tile_masks_equal_the_whole_slide_mask_cropped(monuseg, stores, tmp_path):
    name = SLIDES[0]
    whole = tmp_path / "mask.png"
    args = [
        "annotations",
        "mask",
        monuseg / f"{name}.xml",
        "--slide",
        monuseg / f"{name}.tif",
        "--mpp",
        "0.5",
        "-o",
        whole,
        "--label-map",
        "Annotation 1=1",
        "--mpp-override",
        "0.25",
        "-q",
    ]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    reference = np.array(Image.open(whole))
    padded = np.zeros((reference.shape[0] + 64, reference.shape[1] + 64), np.uint8)  # beyond the slide: 0
    padded[: reference.shape[0], : reference.shape[1]] = reference

    store = open_tile_store(stores / f"{name}.zarr")
    masks, fractions = store.masks[:], store.label_fractions[:]
    assert masks.shape == (store.n_tiles, 64, 64) and fractions.shape == (store.n_tiles, 1)
    for mask, fraction, (x, y) in zip(masks, fractions, store.coords[:]):
        crop = padded[y // 2 : y // 2 + 64, x // 2 : x // 2 + 64]  # level-0 px at 0.25 -> 0.5 µm/px
        assert np.array_equal(mask, crop)
        assert fraction[0] == pytest.approx((mask == 1).mean())
    assert 0.05 < masks.mean() < 0.5  # nuclei cover part of the image, not none or all of it
    # plain zarr sees the same, with the label names
    group = zarr.open_group(str(stores / f"{name}.zarr"), mode="r")
    assert group.attrs["wsipipe"]["labels"] == {"names": ["Annotation 1"], "values": [1]}
    assert group.attrs["wsipipe"]["params"]["annotations"]["sha256"]


def test_changed_annotations_are_refused_unless_overwrite(monuseg, tmp_path):
    name = SLIDES[1]
    xml = tmp_path / "a.xml"
    shutil.copy(monuseg / f"{name}.xml", xml)
    args = [
        str(a) for a in ["tile", monuseg / f"{name}.tif", "-o", tmp_path / "s.zarr", "--annotations", xml, *TILE_ARGS]
    ]
    assert runner.invoke(app, args).exit_code == 0
    assert "already complete" in runner.invoke(app, args).output
    xml.write_text(xml.read_text() + "\n")
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "annotations.sha256 was" in result.output and "--overwrite" in result.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_bad_annotation_options(monuseg, tmp_path):
    slide = str(monuseg / f"{SLIDES[0]}.tif")
    usage = runner.invoke(app, ["tile", slide, "-o", str(tmp_path / "a.zarr"), "--label-map", "Annotation 1=1"])
    assert usage.exit_code == 2 and "need --annotations" in usage.output
    notes = tmp_path / "notes.xml"
    notes.write_text("not annotations")
    bad = runner.invoke(app, ["tile", slide, "-o", str(tmp_path / "b.zarr"), "--annotations", str(notes), *TILE_ARGS])
    assert bad.exit_code != 0 and bad.output.startswith("Error: ") and str(notes) in bad.output
    assert len(bad.output.strip().splitlines()) == 1 and not (tmp_path / "b.zarr").exists()


def test_normalize_keeps_the_masks(stores, tmp_path):
    source = stores / f"{SLIDES[0]}.zarr"
    out = tmp_path / "norm.zarr"
    result = runner.invoke(app, ["normalize", str(source), "-o", str(out), "--method", "reinhard", "-q"])
    assert result.exit_code == 0, result.output
    before, after = open_tile_store(source), open_tile_store(out)
    assert np.array_equal(before.masks[:], after.masks[:])
    assert np.array_equal(before.label_fractions[:], after.label_fractions[:])


@pytest.mark.slow
def test_train_and_evaluate_on_tile_stores_split_by_slide(stores, tmp_path):
    model = tmp_path / "m.safetensors"
    args = [
        "train",
        stores,
        "-o",
        model,
        "--model",
        "plain-unet",
        "--model-args",
        '{"base": 4}',
        "--classes",
        "background,nucleus",
        "--mpp",
        "1.0",
        "--tile-size",
        "32",
        "--epochs",
        "1",
        "--patches-per-epoch",
        "2",
        "--batch-size",
        "2",
        "--folds",
        "2",
        "--device",
        "cpu",
        "--quiet",
    ]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    meta = read_metadata(model)
    data = meta["training"]["data"]
    assert data["kind"] == "tile stores" and data["data_mpp"] == 0.5 and data["data_mpp_assumed"] is False
    assert sorted(data["images"]) == sorted(SLIDES)
    assert "by slide" in meta["validation"]["method"]
    assert sorted(meta["validation"]["per_image"]) == sorted(SLIDES)  # each slide held out once

    report = tmp_path / "eval.json"
    result = runner.invoke(
        app, ["evaluate", str(model), "--data", str(stores), "--json", str(report), "--device", "cpu", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "slide" in result.output
    assert sorted(json.loads(report.read_text())["per_image"]) == sorted(SLIDES)  # one row per slide, not per tile
    assert (
        runner.invoke(app, ["train", str(stores), "-o", str(tmp_path / "x.safetensors"), "--data-mpp", "2"]).exit_code
        == 2
    )
