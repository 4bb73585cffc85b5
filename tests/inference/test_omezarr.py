"""Prediction store: NGFF 0.4 metadata, level shapes, mean/mode downsampling, refusal of foreign stores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsipipe.errors import StoreError
from wsipipe.inference.omezarr import (
    build_pyramid,
    create_prediction_store,
    downsample_mean,
    downsample_mode,
    level_shapes,
    open_prediction_store,
)

CLASSES = ["background", "tumour"]


def test_level_shapes_halve_rounding_up_until_small():
    assert level_shapes(1000, 600) == [(1000, 600), (500, 300), (250, 150)]
    assert level_shapes(200, 100) == [(200, 100)]
    assert level_shapes(1025, 300) == [(1025, 300), (513, 150), (257, 75), (129, 38)]


def test_mean_and_mode_downsampling_on_hand_made_blocks():
    probs = np.array([[[0, 255, 10], [1, 2, 20]]], np.uint8)  # (1, 2, 3): odd width repeats the edge
    # (0 + 255 + 1 + 2) / 4 = 64.5 rounds half up; (10 + 20 + 10 + 20) / 4 = 15
    assert downsample_mean(probs, (1, 2)).tolist() == [[[65, 15]]]
    labels = np.array([[0, 1, 2, 2], [1, 1, 0, 2]], np.uint8)
    assert downsample_mode(labels, (1, 2), 3).tolist() == [[1, 2]]
    tie = np.array([[0, 1], [1, 0]], np.uint8)
    assert downsample_mode(tie, (1, 1), 2).tolist() == [[1]]  # ties keep the higher class


def test_store_metadata_and_levels(tmp_path):
    path = tmp_path / "prediction.zarr"
    store = create_prediction_store(
        path, height=700, width=1100, class_names=CLASSES, mpp=0.5, slide_mpp=0.25, chunk=128
    )
    rng = np.random.default_rng(0)
    labels = np.zeros((700, 1100), np.uint8)
    labels[100:500, 200:900] = 1
    tumour = rng.integers(0, 256, (700, 1100), dtype=np.uint8)
    store.probabilities[1] = tumour
    store.probabilities[0] = 255 - tumour
    store.labels[:] = labels
    with pytest.raises(StoreError, match="unfinished"):
        open_prediction_store(path)
    shapes = build_pyramid(store)
    assert shapes == [(700, 1100), (350, 550), (175, 275), (88, 138)]

    root = json.loads((path / ".zattrs").read_text())
    (multiscale,) = root["multiscales"]
    assert multiscale["version"] == "0.4"
    assert [a["name"] for a in multiscale["axes"]] == ["c", "y", "x"]
    assert [a.get("unit") for a in multiscale["axes"]] == [None, "micrometer", "micrometer"]
    for level, dataset in enumerate(multiscale["datasets"]):
        assert dataset["path"] == str(level)
        scale, translation = dataset["coordinateTransformations"]
        assert scale == {"type": "scale", "scale": [1.0, 0.5 * 2**level, 0.5 * 2**level]}
        # pixel-centre convention: a prediction pixel covering slide pixels 0 and 1 (centred at 0 and
        # 0.25 µm) is centred at 0.125 µm
        assert translation["translation"][1:] == [pytest.approx((0.5 * 2**level - 0.25) / 2)] * 2
        zarray = json.loads((path / str(level) / ".zarray").read_text())
        assert zarray["shape"] == [2, *shapes[level]] and zarray["zarr_format"] == 2
    assert [c["label"] for c in root["omero"]["channels"]] == ["Background", "Tumor"]  # wsipipe.classes
    assert json.loads((path / "labels" / ".zattrs").read_text()) == {"labels": ["classes"]}
    label_attrs = json.loads((path / "labels" / "classes" / ".zattrs").read_text())
    assert [a["name"] for a in label_attrs["multiscales"][0]["axes"]] == ["y", "x"]
    assert len(label_attrs["multiscales"][0]["datasets"]) == len(shapes)
    assert label_attrs["image-label"]["properties"][1] == {"label-value": 1, "class": "Tumor"}
    for level, shape in enumerate(shapes):
        zarray = json.loads((path / "labels" / "classes" / str(level) / ".zarray").read_text())
        assert zarray["shape"] == list(shape)

    reopened = open_prediction_store(path)
    import zarr

    level2_labels = zarr.open_array(str(path / "labels" / "classes" / "2"), mode="r")[:]
    assert np.array_equal(level2_labels, labels[::4, ::4])  # block-aligned rectangle: mode is exact
    level1_tumour = zarr.open_array(str(path / "1"), mode="r")[1]
    expected = (tumour.reshape(350, 2, 550, 2).astype(int).sum(axis=(1, 3)) + 2) // 4
    assert np.array_equal(level1_tumour, expected)
    assert reopened.class_names == CLASSES and reopened.mpp == 0.5


def test_foreign_or_mismatched_store_is_refused(tmp_path):
    with pytest.raises(StoreError, match="not a wsipipe prediction store"):
        open_prediction_store(tmp_path / "missing.zarr")
    path = tmp_path / "p.zarr"
    create_prediction_store(path, height=100, width=100, class_names=CLASSES, mpp=1.0, slide_mpp=0.5, chunk=64)
    with pytest.raises(StoreError, match="expected"):
        create_prediction_store(path, height=100, width=120, class_names=CLASSES, mpp=1.0, slide_mpp=0.5, chunk=64)
