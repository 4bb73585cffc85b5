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
def he_image(stain_dir):
    return np.asarray(Image.open(stain_dir / "tiatoolbox_target.png").convert("RGB"))[:512, :512]


@pytest.fixture(scope="session")
def target_image(stain_dir):
    return np.asarray(Image.open(stain_dir / "warwick_target_p.png").convert("RGB"))[:384, :384]


@pytest.fixture(scope="session")
def slide_tiles(cmu_small_svs):
    """All 256 px tiles of a 2048 x 2816 region of CMU-1-Small-Region (a real H&E slide)."""
    with open_slide(cmu_small_svs) as reader:
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
    with pytest.raises(InvalidInputError, match="device cuda: no CUDA GPU is available"):
        resolve_device("cuda")
    with pytest.raises(InvalidInputError, match="expected auto, cpu, cuda"):
        resolve_device("tpu")


def test_unknown_method():
    with pytest.raises(InvalidInputError, match="^method 'spams': expected one of vahadane, macenko, reinhard$"):
        get_normalizer("spams")


def test_cpu_lookup_equals_the_gather_used_on_gpus():
    from wsipipe.stain._ops import _OD_LUT, SRGB_LINEAR, lookup

    pixels = torch.randint(0, 256, (1000, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for table in (SRGB_LINEAR, _OD_LUT):
        gathered = torch.take(torch.as_tensor(table, dtype=torch.float32), pixels.long())
        assert torch.equal(lookup(pixels, table), gathered)


def test_cpu_luminance_equals_the_torch_sum_used_on_gpus():
    from wsipipe.stain._ops import SRGB_LINEAR, luminance, luminance_torch

    pixels = torch.randint(0, 256, (4, 50, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(luminance(pixels), luminance_torch(pixels))
    by_hand = SRGB_LINEAR[pixels.numpy()] @ np.array([0.212671, 0.715160, 0.072169])  # Y of sRGB (D65)
    assert np.allclose(luminance(pixels).numpy(), by_hand, atol=1e-6)


def test_cpu_lab_conversions_agree_with_the_cie_formulas_used_on_gpus():
    from wsipipe.stain.reinhard import lab_to_rgb, lab_to_rgb_torch, rgb_to_lab, rgb_to_lab_torch

    pixels = torch.randint(0, 256, (20000, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cpu, cie = rgb_to_lab(pixels), rgb_to_lab_torch(pixels)
    assert torch.all((cpu - cie).abs().max(dim=0).values <= torch.tensor([0.25, 0.5, 0.5]))  # OpenCV's float L*a*b*
    assert torch.equal(lab_to_rgb_torch(cie), pixels)  # the formulas invert exactly
    back = lab_to_rgb(cpu).int()
    assert (back - pixels.int()).abs().max() <= 2 and (back == pixels.int()).all(dim=1).float().mean() > 0.97
    white_black = torch.tensor([[255, 255, 255], [0, 0, 0]], dtype=torch.uint8)
    assert torch.allclose(rgb_to_lab(white_black), torch.tensor([[100.0, 0, 0], [0, 0, 0]]), atol=0.01)


def test_weighted_percentile_is_the_percentile_of_the_repeated_values():
    from wsipipe.stain._ops import weighted_percentile

    rng = np.random.default_rng(0)
    for _ in range(50):
        values, counts = rng.normal(size=(40, 2)).round(1), rng.integers(1, 6, 40)  # rounded: ties
        repeated = np.repeat(values, counts, axis=0)
        for q in (0.0, 1.0, rng.uniform(0, 100), 99.0, 100.0):
            assert np.allclose(weighted_percentile(values, counts, q), np.percentile(repeated, q, axis=0))
        assert np.allclose(
            weighted_percentile(values[:, 0], counts, [1.0, 99.0]), np.percentile(repeated[:, 0], [1.0, 99.0])
        )


def test_stain_matrices_from_distinct_colours_equal_those_from_every_pixel(he_image):
    """Estimation runs on each distinct colour weighted by its count: the same as on every pixel."""
    from wsipipe.stain._ops import tissue_mask, unique_colours
    from wsipipe.stain.macenko import macenko_stain_matrix
    from wsipipe.stain.vahadane import vahadane_stain_matrix

    pixels = torch.from_numpy(np.ascontiguousarray(he_image[:128, :128]).reshape(-1, 3))
    colours, counts = unique_colours(pixels)
    assert counts.sum() == len(pixels) and len(colours) == len(np.unique(pixels.numpy(), axis=0)) < len(pixels)
    assert np.array_equal(
        np.sort(np.repeat(colours, counts, axis=0).view("V3").ravel()), np.sort(pixels.numpy().view("V3").ravel())
    )
    tissue = tissue_mask(torch.from_numpy(colours)).numpy()
    od_colours = optical_density(torch.from_numpy(colours[tissue])).double().numpy()
    od_pixels = optical_density(pixels[tissue_mask(pixels)]).double().numpy()
    for learn in (vahadane_stain_matrix, macenko_stain_matrix):
        assert np.allclose(learn(od_colours, counts[tissue]), learn(od_pixels), atol=1e-6), learn.__name__


def test_vahadane_matrix_is_a_minimum_of_its_objective(he_image):
    """Turning either learned stain vector a little, any way, raises Vahadane's objective."""
    from wsipipe.stain._ops import tissue_mask
    from wsipipe.stain.vahadane import DICTIONARY_PENALTY, vahadane_stain_matrix

    pixels = torch.from_numpy(np.ascontiguousarray(he_image[:256, :256]).reshape(-1, 3))
    od = optical_density(pixels[tissue_mask(pixels)]).double()

    def objective(stains):
        codes = nonneg_lasso_2(od, torch.as_tensor(stains), DICTIONARY_PENALTY)
        return float(
            (0.5 * ((od - codes @ torch.as_tensor(stains)) ** 2).sum(1) + DICTIONARY_PENALTY * codes.sum(1)).mean()
        )

    learned = vahadane_stain_matrix(od.numpy())
    best = objective(learned)
    rng = np.random.default_rng(0)
    for _ in range(12):
        turned = learned + rng.normal(scale=0.01, size=(2, 3))  # about half a degree
        turned /= np.linalg.norm(turned, axis=1, keepdims=True)
        assert objective(turned) > best


@pytest.mark.parametrize("method", ["vahadane", "macenko", "reinhard"])
def test_colour_table_gives_what_each_pixel_computed_alone_gives(method, slide_tiles, target_image):
    """On the CPU a slide's tiles are mapped through a table of their distinct colours: the same
    uint8 values as mapping every pixel, tiles without tissue left as they are."""
    all_tiles, _ = slide_tiles
    normalizer = get_normalizer(method).fit(target_image)
    slide = estimate_slide_stain(all_tiles, normalizer)
    threads = torch.get_num_threads()
    tiles = all_tiles[all_tiles.mean(axis=(1, 2, 3)) < 215]  # tissue tiles
    batch = np.ascontiguousarray(np.concatenate([tiles[:6], np.full((1, 256, 256, 3), 240, np.uint8)]))
    out = normalizer.transform(batch, source=slide)
    per_pixel = normalizer._apply(torch.from_numpy(batch).reshape(-1, 3), slide).numpy().reshape(batch.shape)
    assert np.array_equal(out[:6], per_pixel[:6])
    assert np.array_equal(out[6], batch[6]) and not np.array_equal(per_pixel[6], batch[6])
    assert np.array_equal(normalizer.transform(tiles[3], source=slide), per_pixel[3])  # colours already in the table
    assert torch.get_num_threads() == threads  # estimation ran on one thread, then gave the others back
    other = normalizer.estimate(tiles[10])  # another source: another table
    alone = normalizer._apply(torch.from_numpy(tiles[3]).reshape(-1, 3), other).numpy().reshape(tiles[3].shape)
    assert np.array_equal(normalizer.transform(tiles[3], source=other), alone)
    assert not np.array_equal(alone, per_pixel[3])


def test_colour_codes_pack_each_pixel_and_unpack():
    from wsipipe.stain._ops import colour_codes, colours_of

    pixels = np.array([[[1, 2, 3], [255, 0, 128]], [[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
    codes = colour_codes(pixels)
    assert codes.tolist() == [1 + 2 * 256 + 3 * 65536, 255 + 128 * 65536, 0, (1 << 24) - 1]
    assert np.array_equal(colours_of(codes), pixels.reshape(-1, 3))
