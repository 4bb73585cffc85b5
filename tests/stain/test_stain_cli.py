"""``wsipipe normalize`` on a real tile store (tiles of CMU-1-Small-Region)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.slide import open_slide
from wsipipe.stain import StainParams, default_target, estimate_slide_stain, get_normalizer
from wsipipe.store import create_tile_store, open_tile_store

TILE = 128


@pytest.fixture(scope="module")
def region(cmu_small_svs):
    with open_slide(cmu_small_svs) as reader:
        return reader.read_region((512, 768), 0, (4 * TILE, 3 * TILE))


@pytest.fixture
def source_store(tmp_path, region):
    """A complete 12-tile store (one tile per shard at this size) with the real slide's pixels."""
    tiles = region.reshape(3, TILE, 4, TILE, 3).swapaxes(1, 2).reshape(-1, TILE, TILE, 3)
    coords = np.array([(512 + x * TILE, 768 + y * TILE) for y in range(3) for x in range(4)], dtype=np.int64)
    writer = create_tile_store(
        tmp_path / "slide.zarr",
        coords=coords,
        tissue_fraction=np.linspace(0.5, 1, len(tiles)),
        thumbnail=region[::16, ::16],
        tissue_mask=np.ones(region[::16, ::16].shape[:2], dtype=np.uint8),
        tile_size=TILE,
        meta={"slide": "CMU-1-Small-Region.svs", "params": {"tile_size": TILE}},
        tiles_per_shard=1,
    )
    for index in writer.pending_shards():
        writer.write_shard(index, tiles[writer.store.shard_slice(index)])
    writer.finish()
    return tmp_path / "slide.zarr", tiles


def _run(*args):
    return CliRunner().invoke(app, ["normalize", *map(str, args)])


def test_normalize_writes_a_store_with_the_same_coordinates_and_the_slide_stains(source_store, tmp_path):
    path, tiles = source_store
    out = tmp_path / "norm.zarr"
    result = _run(path, "-o", out, "--method", "vahadane", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    source, normalised = open_tile_store(path), open_tile_store(out)
    assert np.array_equal(normalised.coords[...], source.coords[...])
    assert np.array_equal(normalised.tissue_fraction[...], source.tissue_fraction[...])
    assert normalised.meta["slide"] == "CMU-1-Small-Region.svs" and normalised.meta["stage"] == "normalize"
    stain = normalised.meta["stain"]
    assert stain["target"] == default_target("vahadane").to_dict()
    slide = StainParams.from_dict(stain["source"])
    assert np.array(stain["source"]["stain_matrix"]).shape == (2, 3)
    normalizer = get_normalizer("vahadane").fit(default_target("vahadane"))
    assert np.array_equal(normalised.tiles[...], normalizer.transform(tiles, source=slide))
    assert not np.array_equal(normalised.tiles[...], tiles)


def test_the_slide_estimate_samples_a_store_as_it_does_an_array(source_store):
    """zarr arrays have a shape but no len(): a store's tiles are sampled, not all read."""
    path, tiles = source_store
    normalizer = get_normalizer("macenko").fit(default_target("macenko"))
    from_store = estimate_slide_stain(open_tile_store(path).tiles, normalizer, max_tiles=3)
    assert from_store == estimate_slide_stain(tiles, normalizer, max_tiles=3)
    assert from_store != estimate_slide_stain(tiles, normalizer, max_tiles=len(tiles))


def test_normalize_resumes_after_an_interruption(source_store, tmp_path):
    from wsipipe.stages import NormalizeConfig, normalize

    path, _ = source_store
    reference, resumed = tmp_path / "ref.zarr", tmp_path / "resumed.zarr"
    normalize.run(NormalizeConfig(input=path, output=reference, method="macenko", device="cpu"))

    def interrupt(done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        normalize.run(NormalizeConfig(input=path, output=resumed, method="macenko", device="cpu"), progress=interrupt)
    assert not resumed.exists() and (tmp_path / "resumed.zarr.partial").exists()
    written = []
    result = normalize.run(
        NormalizeConfig(input=path, output=resumed, method="macenko", device="cpu"),
        progress=lambda d, t: written.append(d),
    )
    per_shard = open_tile_store(reference).tiles_per_shard
    assert written[0] == 4 + per_shard and written[-1] == 12  # only the missing shards were redone
    result = open_tile_store(result.output)
    assert np.array_equal(result.tiles[...], open_tile_store(reference).tiles[...])
    assert result.meta["stain"] == open_tile_store(reference).meta["stain"]


def test_normalising_twice_is_refused_unless_overwrite(source_store, tmp_path):
    path, _ = source_store
    once, twice = tmp_path / "once.zarr", tmp_path / "twice.zarr"
    assert _run(path, "-o", once, "--method", "reinhard", "--device", "cpu", "-q").exit_code == 0
    result = _run(once, "-o", twice, "--method", "reinhard", "--device", "cpu", "-q")
    assert result.exit_code == 2
    assert "already stain-normalised (reinhard)" in result.output and "--overwrite" in result.output
    assert not twice.exists()
    assert _run(once, "-o", twice, "--method", "reinhard", "--device", "cpu", "-q", "--overwrite").exit_code == 0
    assert open_tile_store(twice).complete


def test_target_image_option(source_store, tmp_path, stain_dir):
    path, _ = source_store
    target = stain_dir / "warwick_target_p.png"
    result = _run(path, "-o", tmp_path / "t.zarr", "--target", target, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    stain = open_tile_store(tmp_path / "t.zarr").meta["stain"]
    assert stain["target_image"].startswith("warwick_target_p.png sha256:")
    expected = get_normalizer("vahadane").fit(np.asarray(Image.open(target).convert("RGB"))).target
    assert stain["target"] == expected.to_dict()


def test_bad_targets_and_options_are_usage_errors(source_store, tmp_path):
    path, _ = source_store
    white = tmp_path / "white.png"
    Image.fromarray(np.full((64, 64, 3), 250, dtype=np.uint8)).save(white)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((64, 64), 120, dtype=np.uint8)).save(grey)
    notimage = tmp_path / "notimage.png"
    notimage.write_text("hello")
    cases = [
        (["--target", white], "too little tissue"),
        (["--target", grey], "greyscale"),
        (["--target", notimage], "cannot read the image"),
        (["--method", "spams"], "--method 'spams'"),
    ]
    for extra, message in cases:
        result = _run(path, "-o", tmp_path / "x.zarr", "--device", "cpu", "-q", *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_clear_error_and_auto_falls_back(source_store, tmp_path):
    path, _ = source_store
    result = _run(path, "-o", tmp_path / "c.zarr", "--device", "cuda")
    assert result.exit_code == 2 and "no CUDA GPU is available" in result.output
    result = _run(path, "-o", tmp_path / "a.zarr", "--device", "auto")
    assert result.exit_code == 0 and "running on the CPU" in result.output


def test_missing_store_through_the_console(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "wsipipe", "normalize", str(tmp_path / "nope.zarr"), "-o", str(tmp_path / "o.zarr")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert "nope.zarr: no such store" in completed.stderr


def test_tile_then_normalize_end_to_end(tmp_path, cmu_small_svs):
    tiles = tmp_path / "cmu.zarr"
    result = CliRunner().invoke(app, ["tile", str(cmu_small_svs), "-o", str(tiles), "--tile-size", "256", "--quiet"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "cmu.norm.zarr"
    assert _run(tiles, "-o", out, "--device", "cpu", "-q").exit_code == 0
    source, normalised = open_tile_store(tiles), open_tile_store(out)
    assert np.array_equal(normalised.coords[...], source.coords[...])
    assert normalised.meta["stain"]["source"]["looks_like_he"] is True
    assert normalised.n_tiles == source.n_tiles and normalised.complete


def test_ihc_target_is_warned_about(source_store, tmp_path, stain_dir):
    path, _ = source_store
    target = stain_dir / "skimage_ihc.png"
    result = _run(path, "-o", tmp_path / "ihc.zarr", "--target", target, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert f"Warning: --target {target}" in result.output and "probably not H&E" in result.output
    assert open_tile_store(tmp_path / "ihc.zarr").meta["stain"]["target"]["looks_like_he"] is False
