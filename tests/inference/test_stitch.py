"""Stitcher: equals whole-image inference of a convolutional model, no seams, resumable, bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import zarr

from wsipipe.errors import StoreError
from wsipipe.inference.engine import Blender
from wsipipe.inference.sliding import cosine_window
from wsipipe.inference.stitch import JOURNAL_NAME, Stitcher, StripStitcher, first_argmax

TILE, OVERLAP, CHUNK = 64, 16, 32
STRIDE = TILE - OVERLAP
N_CLASSES = 3
HALO = 3  # three 3x3 convolutions: each output pixel sees 3 pixels either side


def _toy_model() -> torch.nn.Module:
    """A fixed random fully convolutional net with a known receptive field (7x7), softmax output."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Conv2d(8, N_CLASSES, 3, padding=1),
        torch.nn.Softmax(dim=1),
    )
    return net.eval()


def _image(height: int, width: int) -> np.ndarray:
    """Smooth random float image (3, H, W): structure at several scales, like tissue."""
    rng = np.random.default_rng(1)
    coarse = rng.normal(size=(3, height // 8 + 2, width // 8 + 2)).astype(np.float32)
    smooth = torch.nn.functional.interpolate(
        torch.from_numpy(coarse)[None], scale_factor=8, mode="bilinear", align_corners=False
    )[0, :, :height, :width].numpy()
    return smooth + 0.05 * rng.normal(size=(3, height, width)).astype(np.float32)


def _predict(net, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(image))[None])[0].numpy()


def _tile_origins(height: int, width: int, stride: int = STRIDE) -> list[tuple[int, int]]:
    """Row-major grid covering the image (the last tiles overhang and are zero-padded)."""
    return [(x, y) for y in range(0, height - OVERLAP, stride) for x in range(0, width - OVERLAP, stride)]


def _tile(image: np.ndarray, x: int, y: int) -> np.ndarray:
    out = np.zeros((image.shape[0], TILE, TILE), np.float32)
    crop = image[:, y : y + TILE, x : x + TILE]
    out[:, : crop.shape[1], : crop.shape[2]] = crop
    return out


def _arrays(tmp_path, height, width, name="pred"):
    root = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="a")
    probs = root.require_array(
        "p", shape=(N_CLASSES, height, width), chunks=(N_CLASSES, CHUNK, CHUNK), dtype="uint8", fill_value=0
    )
    labels = root.require_array("l", shape=(height, width), chunks=(CHUNK, CHUNK), dtype="uint8", fill_value=0)
    return probs, labels, tmp_path / f"{name}.zarr"


def _stitch(tmp_path, net, image, *, overlap=OVERLAP, margin=None, stride=STRIDE, stop_after=None, name="pred"):
    height, width = image.shape[1:]
    probs, labels, journal = _arrays(tmp_path, height, width, name)
    stitcher = Stitcher(probs, labels, journal, tile_size=TILE, overlap=overlap, chunk=CHUNK, margin=margin)
    for count, (x, y) in enumerate(_tile_origins(height, width, stride)):
        if stop_after is not None and count == stop_after:
            return stitcher, probs, labels  # "killed": no finish()
        if stitcher.is_done(y):
            continue
        stitcher.add(_predict(net, _tile(image, x, y)), x, y)
    stitcher.finish()
    return stitcher, probs, labels


def test_window_neighbours_sum_to_one_and_margin_is_near_zero():
    window = cosine_window(TILE, OVERLAP, margin=4)
    overlap_sum = window[STRIDE:] + window[:OVERLAP]
    assert np.allclose(overlap_sum[4:-4], 1.0, atol=1e-6)
    assert window[:4].max() <= 1e-3 and window[OVERLAP:STRIDE].min() == 1.0


def test_slide_stitching_blends_as_in_memory_inference_does(tmp_path):
    """``segment`` (Stitcher) and ``evaluate``/``predict`` (Blender) weight tiles alike, so a
    model's evaluated figures are what slide inference gives: tiles that disagree everywhere
    (random probabilities) blend to the same result."""
    height, width = 2 * STRIDE + TILE, 3 * STRIDE + TILE
    rng = np.random.default_rng(2)
    positions = [(y, x) for y in range(0, height - TILE + 1, STRIDE) for x in range(0, width - TILE + 1, STRIDE)]
    blender = Blender(N_CLASSES, height, width, TILE, OVERLAP)
    probs, labels, journal = _arrays(tmp_path, height, width)
    stitcher = Stitcher(probs, labels, journal, tile_size=TILE, overlap=OVERLAP, chunk=CHUNK)
    for y, x in positions:
        tile = rng.dirichlet(np.ones(N_CLASSES), size=(TILE, TILE)).transpose(2, 0, 1).astype(np.float32)
        blender.add(tile, x, y)
        stitcher.add(tile, x, y)
    stitcher.finish()
    assert np.abs(probs[:].astype(int) - np.rint(blender.finish() * 255)).max() <= 1


def test_first_argmax_is_numpy_argmax_ties_included():
    values = np.array(
        [[[0.2, 0.5, 0.5], [0.1, 0.0, 0.3]], [[0.7, 0.5, 0.2], [0.1, 0.0, 0.3]], [[0.1, 0.5, 0.9], [0.8, 0.0, 0.3]]]
    )
    expected = [[1, 0, 2], [2, 0, 0]]  # ties go to the first class, as argmax's
    assert first_argmax(values).tolist() == expected == values.argmax(axis=0).tolist()
    many = np.random.default_rng(0).integers(0, 3, (5, 40, 40)).astype(np.float32)  # many ties
    assert np.array_equal(first_argmax(many), many.argmax(axis=0))


def test_labels_outside_inside_are_background_and_probabilities_are_kept(tmp_path):
    """``inside`` (segment's tissue rule) clears labels as they are written; the probabilities
    stay as the model gave them, so they equal an unrestricted run's."""
    net, image = _toy_model(), _image(3 * STRIDE + TILE, 3 * STRIDE + TILE)
    _, free_probs, free_labels = _stitch(tmp_path, net, image, name="free")
    height, width = image.shape[1:]
    probs, labels, journal = _arrays(tmp_path, height, width, "inside")
    seen = []

    def left_half(y0, y1, x0, x1):
        seen.append((y0, y1, x0, x1))
        return np.broadcast_to(np.arange(x0, x1) < width // 2, (y1 - y0, x1 - x0))

    stitcher = Stitcher(probs, labels, journal, tile_size=TILE, overlap=OVERLAP, chunk=CHUNK, inside=left_half)
    for x, y in _tile_origins(height, width):
        stitcher.add(_predict(net, _tile(image, x, y)), x, y)
    stitcher.finish()
    assert np.array_equal(probs[:], free_probs[:])
    assert np.array_equal(labels[:, : width // 2], free_labels[:, : width // 2])
    assert not labels[:, width // 2 :].any() and free_labels[:, width // 2 :].any()
    assert {(y0, x0) for y0, _, x0, _ in seen} == {
        (y, x) for y in range(0, height, CHUNK) for x in range(0, width, CHUNK)
    }


def test_stitched_equals_whole_image_inference_away_from_border(tmp_path):
    net = _toy_model()
    image = _image(200, 260)
    whole = _predict(net, image)
    _, probs, labels = _stitch(tmp_path, net, image, margin=HALO + 1)
    inner = (slice(None), slice(HALO, -HALO - TILE), slice(HALO, -HALO - TILE))
    expected = np.rint(whole * 255)
    diff = np.abs(probs[:].astype(int) - expected)[inner]
    assert diff.max() <= 1  # uint8 rounding only
    assert (
        np.array_equal(labels[:][inner[1:]], whole.argmax(0)[inner[1:]])
        or (
            # argmax can only differ where two classes tie within the uint8 step
            np.sort(whole, axis=0)[-1] - np.sort(whole, axis=0)[-2]
        )[inner[1:]][labels[:][inner[1:]] != whole.argmax(0)[inner[1:]]].max()
        < 2 / 255
    )


def _border_gradient_ratio(probs: np.ndarray, width: int) -> float:
    """Mean |d/dx| at tile-border columns over the mean at all other columns."""
    grad = np.abs(np.diff(probs.astype(np.float32), axis=2)).mean(axis=(0, 1))  # per column step
    borders = set()
    for x in range(0, width, STRIDE):
        borders.update({x - 1, x + TILE - 1})
    borders = sorted(b for b in borders if 0 <= b < grad.size)
    others = np.setdiff1d(np.arange(grad.size), borders)
    return float(grad[borders].mean() / grad[others].mean())


def test_no_seams_at_tile_borders_while_naive_pasting_shows_them(tmp_path):
    net = _toy_model()
    image = _image(160, 400)
    _, blended, _ = _stitch(tmp_path, net, image, name="blended")
    assert _border_gradient_ratio(blended[:], 400) <= 1.1
    # Negative control: tiles pasted side by side without overlap show the grid.
    naive_probs, naive_labels, journal = _arrays(tmp_path, 160, 400, "naive")
    naive = Stitcher(naive_probs, naive_labels, journal, tile_size=TILE, overlap=0, chunk=CHUNK)
    for y in range(0, 160, TILE):
        for x in range(0, 400, TILE):
            naive.add(_predict(net, _tile(image, x, y)), x, y)
    naive.finish()
    grad = np.abs(np.diff(naive_probs[:].astype(np.float32), axis=2)).mean(axis=(0, 1))
    borders = np.arange(TILE - 1, 399, TILE)
    assert grad[borders].mean() > 1.5 * np.delete(grad, borders).mean()


def test_killed_run_resumes_to_the_same_result(tmp_path):
    net = _toy_model()
    image = _image(200, 150)
    _, full_probs, full_labels = _stitch(tmp_path, net, image, name="full")
    n_tiles = len(_tile_origins(200, 150))
    stopped, _, _ = _stitch(tmp_path, net, image, stop_after=n_tiles // 2, name="resumed")
    assert 0 < stopped.done_rows < 200 and not stopped.complete
    resumed, probs, labels = _stitch(tmp_path, net, image, name="resumed")
    assert resumed.complete
    assert np.array_equal(probs[:], full_probs[:]) and np.array_equal(labels[:], full_labels[:])


def test_resume_with_other_parameters_is_refused(tmp_path):
    probs, labels, journal = _arrays(tmp_path, 100, 100)
    Stitcher(probs, labels, journal, tile_size=TILE, overlap=OVERLAP, chunk=CHUNK)
    assert (journal / JOURNAL_NAME).exists()
    with pytest.raises(StoreError, match="other parameters"):
        Stitcher(probs, labels, journal, tile_size=TILE, overlap=8, chunk=CHUNK)


def test_rows_written_without_the_label_restriction_are_not_resumed_with_it(tmp_path):
    """A journal of unrestricted labels (or one older than the restriction) would leave its rows'
    labels outside the tissue: resuming it with ``inside`` is refused."""
    probs, labels, journal = _arrays(tmp_path, 100, 100)
    Stitcher(probs, labels, journal, tile_size=TILE, overlap=OVERLAP, chunk=CHUNK)
    with pytest.raises(StoreError, match="other parameters"):
        Stitcher(probs, labels, journal, tile_size=TILE, overlap=OVERLAP, chunk=CHUNK, inside=lambda *box: True)


def test_tiles_out_of_row_order_are_refused(tmp_path):
    probs, labels, journal = _arrays(tmp_path, 200, 200)
    stitcher = Stitcher(probs, labels, journal, tile_size=TILE, overlap=OVERLAP, chunk=CHUNK)
    stitcher.add(np.ones((N_CLASSES, TILE, TILE), np.float32) / N_CLASSES, 0, 96)
    with pytest.raises(ValueError, match="row order"):
        stitcher.add(np.ones((N_CLASSES, TILE, TILE), np.float32) / N_CLASSES, 0, 48)


def test_memory_stays_at_one_band_for_a_tall_wide_slide(tmp_path):
    """A 6000 x 6000 prediction (a dense float accumulator would be 576 MB) with tissue in a strip."""
    size = 6000
    probs, labels, journal = _arrays(tmp_path, size, size)
    stitcher = Stitcher(probs, labels, journal, tile_size=TILE, overlap=OVERLAP, chunk=CHUNK)
    tile = np.zeros((N_CLASSES, TILE, TILE), np.float32)
    tile[1] = 1.0
    tracemalloc.start()
    for y in range(0, size - OVERLAP, STRIDE):
        for x in (3000, 3000 + STRIDE, 3000 + 2 * STRIDE):
            stitcher.add(tile, x, y)
    stitcher.finish()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    band_bytes = (N_CLASSES + 1) * (TILE + CHUNK) * 4
    assert stitcher.max_accumulator_bytes <= band_bytes * (3 * STRIDE + TILE + 2 * CHUNK)
    assert peak < 20e6
    assert labels[4000, 3000 + STRIDE] == 1 and labels[4000, 100] == 0
    assert probs[1, 4000, 3000 + STRIDE] == 255 and probs[1, 4000, 100] == 0


def test_strips_bound_the_accumulator_by_the_strip_not_the_slide(tmp_path):
    """Tissue across the whole width of a wide prediction: the full-width band grows with the width,
    a strip stitcher's does not, and both give the same arrays."""
    width, height = 8 * CHUNK, 3 * CHUNK
    tile = np.zeros((N_CLASSES, TILE, TILE), np.float32)
    tile[1] = 0.75
    tile[0] = 0.25
    positions = [(x, y) for y in range(0, height - OVERLAP, STRIDE) for x in range(0, width - OVERLAP, STRIDE)]
    results = {}
    for name in ("full", "strips"):
        probs, labels, journal = _arrays(tmp_path / name, height, width)
        if name == "full":
            stitcher = Stitcher(probs, labels, journal, tile_size=TILE, overlap=OVERLAP, chunk=CHUNK)
            for x, y in positions:
                stitcher.add(tile, x, y)
        else:
            stitcher = StripStitcher(
                probs, labels, journal, tile_size=TILE, overlap=OVERLAP, chunk=CHUNK, strip_width=2 * CHUNK
            )
            for _, x, y, _ in stitcher.plan(positions):
                stitcher.add(tile, x, y)
        stitcher.finish()
        results[name] = (probs[...], labels[...], stitcher.max_accumulator_bytes)
    assert np.array_equal(results["full"][0], results["strips"][0])
    assert np.array_equal(results["full"][1], results["strips"][1])
    assert results["strips"][2] * 3 <= results["full"][2]  # 3 chunk columns at most, against 8


def test_strip_stitcher_takes_tiles_in_its_plan_order_only(tmp_path):
    probs, labels, journal = _arrays(tmp_path, 2 * CHUNK, 4 * CHUNK)
    stitcher = StripStitcher(
        probs, labels, journal, tile_size=TILE, overlap=OVERLAP, chunk=CHUNK, strip_width=2 * CHUNK
    )
    order = stitcher.plan([(0, 0), (STRIDE, 0)])
    tile = np.full((N_CLASSES, TILE, TILE), 1 / N_CLASSES, np.float32)
    with pytest.raises(ValueError, match=r"tile at \(48, 0\) does not come next"):
        stitcher.add(tile, STRIDE, 0)
    for _, x, y, _ in order:
        stitcher.add(tile, x, y)
    with pytest.raises(ValueError, match="does not come next"):
        stitcher.add(tile, 0, 0)
