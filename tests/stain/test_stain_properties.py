"""Hand-checkable properties of the stain normalisers, slide-level estimation and HED jitter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsipipe.errors import InvalidInputError
from wsipipe.slide import open_slide
from wsipipe.stain import HEDJitter, default_target, estimate_slide_stain, get_normalizer
from wsipipe.stain._ops import nonneg_lasso_2, od_to_rgb, optical_density
from wsipipe.stain.targets import DEFAULT_TARGET_FILE, compute_default_target

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def he_image(data_dir):
    return np.asarray(Image.open(data_dir / "stain" / "tiatoolbox_target.png").convert("RGB"))[:512, :512]


@pytest.fixture(scope="session")
def target_image(data_dir):
    return np.asarray(Image.open(data_dir / "stain" / "warwick_target_p.png").convert("RGB"))[:384, :384]


@pytest.fixture(scope="session")
def slide_tiles(data_dir):
    """All 256 px tiles of a 2048 x 2816 region of CMU-1-Small-Region (a real H&E slide)."""
    with open_slide(data_dir / "slides" / "CMU-1-Small-Region.svs") as reader:
        image = reader.read_region((0, 0), 0, (2048, 2816))
    tiles = image.reshape(11, 256, 8, 256, 3).swapaxes(1, 2).reshape(-1, 256, 256, 3)
    return np.ascontiguousarray(tiles), image


def test_optical_density_round_trip_is_exact_for_every_level():
    levels = torch.arange(1, 256, dtype=torch.uint8).repeat(3, 1).T.contiguous()
    assert torch.equal(od_to_rgb(optical_density(levels)), levels)
    assert float(optical_density(torch.tensor([[0, 255, 128]], dtype=torch.uint8))[0, 0]) == pytest.approx(np.log(255))


def test_concentrations_solve_the_nonnegative_lasso_exactly():
    generator = torch.Generator().manual_seed(1)
    od = torch.rand((5000, 3), generator=generator, dtype=torch.float64) * 2 - 0.2
    stains = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]], dtype=torch.float64)
    stains = stains / stains.norm(dim=1, keepdim=True)
    ours = nonneg_lasso_2(od, stains, 0.05)
    reference = torch.zeros_like(ours)  # projected gradient, run to convergence
    step = 1 / float(torch.linalg.eigvalsh(stains @ stains.T).max())
    for _ in range(5000):
        reference = (reference - step * ((reference @ stains - od) @ stains.T + 0.05)).clamp(min=0)
    assert (ours >= 0).all()
    assert torch.allclose(ours, reference, atol=1e-9)


@pytest.mark.parametrize("method", ["vahadane", "macenko"])
def test_stain_matrix_unit_rows_haematoxylin_first(method, he_image):
    params = get_normalizer(method).estimate(he_image)
    matrix = params.array("stain_matrix")
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0)
    assert matrix[0, 0] > matrix[1, 0]  # haematoxylin absorbs more red (it is the bluer stain)
    assert params.looks_like_he is True
    assert np.all(params.array("max_concentrations") > 0)
    if method == "vahadane":
        assert np.all(matrix >= 0)


@pytest.mark.parametrize("method", ["vahadane", "macenko", "reinhard"])
def test_target_onto_itself_is_nearly_identity(method, he_image):
    normalizer = get_normalizer(method).fit(he_image)
    out = normalizer.transform(he_image)
    assert np.abs(out.astype(int) - he_image.astype(int)).mean() < 3.0


@pytest.mark.parametrize("method", ["vahadane", "macenko", "reinhard"])
def test_deterministic_for_a_seed(method, he_image, target_image):
    first = get_normalizer(method, seed=3).fit(target_image)
    second = get_normalizer(method, seed=3).fit(target_image)
    assert first.target == second.target
    assert np.array_equal(first.transform(he_image), second.transform(he_image))


def test_slide_estimate_is_reused_for_every_tile(slide_tiles, target_image):
    tiles, whole = slide_tiles
    normalizer = get_normalizer("vahadane").fit(target_image)
    slide = estimate_slide_stain(tiles, normalizer, max_tiles=len(tiles))  # every tile: the region
    whole_image = normalizer.estimate(whole, sample_pixels=1_000_000)
    cosines = np.sum(slide.array("stain_matrix") * whole_image.array("stain_matrix"), axis=1)
    angles = np.degrees(np.arccos(np.clip(cosines, -1, 1)))  # two pixel samples of one region:
    assert angles[0] < 5.0 and angles[1] < 2.0  # CMU-1's haematoxylin direction is loosely determined
    assert np.allclose(slide.array("max_concentrations"), whole_image.array("max_concentrations"), rtol=0.1)
    tiles = tiles[tiles.mean(axis=(1, 2, 3)) < 215]  # a few tissue tiles, transformed with it
    batch = normalizer.transform(tiles, source=slide)
    one_by_one = np.stack([normalizer.transform(tile, source=slide) for tile in tiles])
    assert np.array_equal(batch, one_by_one)
    as_tensor = normalizer.transform(torch.from_numpy(tiles), source=slide)
    assert isinstance(as_tensor, torch.Tensor) and np.array_equal(as_tensor.numpy(), batch)
    # the same tile in another slide context: only the slide estimate differs, not the tile
    own = normalizer.transform(tiles[0])
    assert not np.array_equal(own, batch[0])


def test_slide_sample_spreads_over_the_whole_store():
    from wsipipe.stain.slide import sample_tile_indices

    picked = sample_tile_indices(1000, 10, seed=0)
    assert [index // 100 for index in picked] == list(range(10))
    assert picked == sample_tile_indices(1000, 10, seed=0)
    assert sample_tile_indices(5, 10, seed=0) == [0, 1, 2, 3, 4]


def test_default_target_is_the_example_slide_estimate():
    shipped = json.loads((REPO / "wsipipe" / "resources" / DEFAULT_TARGET_FILE).read_text())
    recomputed = compute_default_target(REPO / "examples" / "data" / "CMU-1-Small-Region.svs")
    for method, params in shipped["methods"].items():
        for key, value in params.items():
            if isinstance(value, list):
                assert np.allclose(recomputed["methods"][method][key], value, atol=1e-6), (method, key)
        assert default_target(method).to_dict() == params
    assert shipped["methods"]["vahadane"]["looks_like_he"] is True


def test_hed_jitter_is_seeded_and_identity_without_jitter(he_image):
    batch = np.stack([he_image[:128, :128], he_image[128:256, :128]])
    assert np.array_equal(HEDJitter(0, 0)(batch), np.maximum(batch, 1))
    first, second = HEDJitter(seed=7), HEDJitter(seed=7)
    a, b = first(batch), second(batch)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, HEDJitter(seed=8)(batch))
    assert not np.array_equal(first(batch), a)  # a new draw per call
    assert 0 < np.abs(a.astype(int) - batch.astype(int)).mean() < 20
    tensor_out = HEDJitter(seed=7)(torch.from_numpy(batch))
    assert isinstance(tensor_out, torch.Tensor) and np.array_equal(tensor_out.numpy(), a)


def test_hed_jitter_with_slide_stains(he_image):
    stains = get_normalizer("vahadane").estimate(he_image)
    jitter = HEDJitter(0, 0, stains=stains)
    assert np.array_equal(jitter(he_image), np.maximum(he_image, 1))


def test_device_option(monkeypatch):
    from wsipipe.device import resolve_device

    messages = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", notify=messages.append) == torch.device("cpu")
    assert "No CUDA GPU found" in messages[0]
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InvalidInputError, match="--device cuda: no CUDA GPU is available"):
        resolve_device("cuda")
    with pytest.raises(InvalidInputError, match="expected auto, cpu, cuda"):
        resolve_device("tpu")


def test_unknown_method():
    with pytest.raises(InvalidInputError, match="--method 'spams'"):
        get_normalizer("spams")


def test_cpu_lookup_equals_the_gather_used_on_gpus():
    from wsipipe.stain._ops import SRGB_LINEAR, _OD_LUT, lookup

    pixels = torch.randint(0, 256, (1000, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for table in (SRGB_LINEAR, _OD_LUT):
        gathered = torch.take(torch.as_tensor(table, dtype=torch.float32), pixels.long())
        assert torch.equal(lookup(pixels, table), gathered)
