"""Inputs that are not ordinary H&E tiles: pass through unchanged or fail with a clear message."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from wsipipe.errors import StainError
from wsipipe.stain import StainWarning, get_normalizer

METHODS = ["vahadane", "macenko", "reinhard"]


@pytest.fixture(scope="module")
def he_image(stain_dir):
    return np.asarray(Image.open(stain_dir / "stardist_histo.jpg").convert("RGB"))


@pytest.fixture(scope="module", params=METHODS)
def fitted(request, he_image):
    normalizer = get_normalizer(request.param).fit(he_image)
    return normalizer, normalizer.estimate(he_image)


def _flat(value, size=64):
    return np.full((size, size, 3), value, dtype=np.uint8)


@pytest.mark.parametrize("background", [255, 235])
def test_background_tiles_pass_through_unchanged(fitted, background):
    normalizer, slide = fitted
    tile = _flat(background)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # background is expected: no warning either
        assert np.array_equal(normalizer.transform(tile), tile)
        assert np.array_equal(normalizer.transform(tile, source=slide), tile)


def test_background_tiles_in_a_batch_stay_unchanged(fitted, he_image):
    normalizer, slide = fitted
    batch = np.stack([_flat(255, 128), np.ascontiguousarray(he_image[:128, :128])])
    out = normalizer.transform(batch, source=slide)
    assert np.array_equal(out[0], batch[0])
    assert np.array_equal(out[1], normalizer.transform(batch[1], source=slide))


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 0, 0), (120, 60, 160)])
def test_single_colour_tiles_work_or_are_left_unchanged_with_a_warning(fitted, colour):
    normalizer, slide = fitted
    tile = np.broadcast_to(np.array(colour, dtype=np.uint8), (32, 32, 3)).copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        own = normalizer.transform(tile)
    if normalizer.method != "reinhard":  # one colour has no two stains to separate
        assert np.array_equal(own, tile)
        assert any("left unchanged" in str(w.message) for w in caught)
    cached = normalizer.transform(tile, source=slide)
    assert cached.shape == tile.shape and cached.dtype == np.uint8
    assert len(np.unique(cached.reshape(-1, 3), axis=0)) == 1  # one colour stays one colour


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 3, 3), (9, 9, 3)])
def test_tiny_images(fitted, he_image, shape):
    normalizer, slide = fitted
    tile = np.ascontiguousarray(he_image[: shape[0], : shape[1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StainWarning)
        assert np.array_equal(normalizer.transform(tile), tile)  # too few pixels to estimate
    assert normalizer.transform(tile, source=slide).shape == shape


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((16, 16), dtype=np.uint8), "greyscale"),
        (np.zeros((16, 16, 1), dtype=np.uint8), "greyscale"),
        (np.zeros((16, 16, 3), dtype=np.float32), "dtype float32"),
        (np.zeros((2, 16, 16, 5), dtype=np.uint8), "image shape"),
        (np.zeros((0, 16, 3), dtype=np.uint8), "empty"),
        ([[1, 2, 3]], "numpy array or torch tensor"),
    ],
)
def test_unusable_arrays_are_refused_clearly(fitted, image, message):
    normalizer, _ = fitted
    with pytest.raises(StainError, match=message):
        normalizer.transform(image)


def test_rgba_is_composited_on_white(fitted, cpm15_dir):
    normalizer, slide = fitted
    rgba = np.asarray(Image.open(cpm15_dir / "image01.png"))[:128, :128]
    assert rgba.shape[-1] == 4
    rgba = rgba.copy()
    rgba[:8, :8, 3] = 0  # a transparent corner reads as white background
    rgb = np.asarray(
        Image.alpha_composite(Image.new("RGBA", (128, 128), "white"), Image.fromarray(rgba)).convert("RGB")
    )
    out = normalizer.transform(rgba, source=slide)
    assert out.shape == (128, 128, 3)
    assert np.array_equal(out, normalizer.transform(rgb, source=slide))
    assert np.array_equal(out[:8, :8], np.full((8, 8, 3), 255, dtype=np.uint8))


@pytest.mark.parametrize("method", METHODS)
def test_target_without_tissue_is_a_clear_error(method):
    with pytest.raises(StainError, match="target image: too little tissue"):
        get_normalizer(method).fit(_flat(250))


def test_black_target_is_a_clear_error():
    with pytest.raises(StainError, match="target image: .*(single colour|separate)"):
        get_normalizer("vahadane").fit(_flat(0))


def test_transform_before_fit_is_a_programming_error():
    with pytest.raises(RuntimeError, match="before fit"):
        get_normalizer("vahadane").transform(_flat(128))


def test_source_of_another_method_is_refused(he_image):
    vahadane = get_normalizer("vahadane").fit(he_image)
    with pytest.raises(StainError, match="for 'reinhard', not 'vahadane'"):
        vahadane.transform(he_image, source=get_normalizer("reinhard").estimate(he_image))


def test_torch_tensor_in_torch_tensor_out(fitted, he_image):
    normalizer, slide = fitted
    out = normalizer.transform(torch.from_numpy(np.ascontiguousarray(he_image)), source=slide)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    assert np.array_equal(out.numpy(), normalizer.transform(he_image, source=slide))
