"""Tiling into the zarr store: layout, pixels, resume after an interruption, refusals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from terminal import foreground_ctrl_c
from typer.testing import CliRunner

import wsipipe.tiling as tiling
from wsipipe.cli.main import app
from wsipipe.errors import StoreError
from wsipipe.grid import build_grid
from wsipipe.slide import open_slide
from wsipipe.stages import TileConfig
from wsipipe.stages.tile import run as tile_run
from wsipipe.store import JOURNAL_NAME, create_derived_store, open_tile_store
from wsipipe.tissue import detect_tissue, read_thumbnail, thumbnail_downsample

REPO = Path(__file__).resolve().parents[1]
OPTIONS = {"tile_size": 32, "mpp": 0.5, "tissue_threshold": 0.1, "qc": "off"}
ARRAYS = ("tiles", "coords", "tissue_fraction", "thumbnail", "tissue_mask")


@pytest.fixture(scope="module")
def reference_store(cmu_small_svs, tmp_path_factory):
    """An uninterrupted run with two worker threads."""
    path = tmp_path_factory.mktemp("ref") / "cmu.zarr"
    tile_run(TileConfig(slide=cmu_small_svs, output=path, readers=2, **OPTIONS))
    return path


def _assert_same_store(a: Path, b: Path) -> None:
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(ga[name][...], gb[name][...], err_msg=name)
    assert dict(ga.attrs) == dict(gb.attrs)
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))


def test_store_layout_opens_with_plain_zarr(reference_store, cmu_small_svs):
    group = zarr.open_group(str(reference_store), mode="r")
    tiles = group["tiles"]
    n = tiles.shape[0]
    assert tiles.shape[1:] == (32, 32, 3) and tiles.dtype == np.uint8
    assert tiles.chunks == (1, 32, 32, 3)
    assert tiles.shards[0] > 1  # several tiles per shard file
    shard_files = list((reference_store / "tiles" / "c").iterdir())
    assert len(shard_files) == -(-n // tiles.shards[0])
    assert group["coords"].shape == (n, 2) and group["coords"].dtype == np.int64
    assert group["tissue_fraction"].shape == (n,) and group["tissue_fraction"].dtype == np.float32
    assert group["thumbnail"].ndim == 3 and group["tissue_mask"].shape == group["thumbnail"].shape[:2]
    meta = group.attrs["wsipipe"]
    assert meta["complete"] is True
    assert meta["slide"]["path"] == str(cmu_small_svs.resolve())
    assert meta["slide"]["size_bytes"] == cmu_small_svs.stat().st_size
    assert meta["mpp"] == 0.5 and meta["tile_size"] == 32 and meta["overlap"] == 0 and meta["level"] == 0
    assert meta["downsample"] == pytest.approx(0.5 / 0.499)
    assert meta["params"]["tissue_threshold"] == 0.1 and meta["wsipipe_version"]
    assert not (reference_store.parent / "cmu.zarr.partial").exists()


def test_tiles_coords_and_fractions_match_an_independent_read(reference_store, cmu_small_svs):
    store = open_tile_store(reference_store)
    reader = open_slide(cmu_small_svs)
    downsample = thumbnail_downsample(reader)
    mask = detect_tissue(read_thumbnail(reader, downsample), reader.mpp * downsample)
    grid = build_grid(reader, tile_size=32, mpp=0.5, tissue_mask=mask, mask_downsample=downsample)
    keep = grid.tissue_fraction >= 0.1
    assert 0 < keep.sum() < len(keep)  # glass tiles were dropped
    np.testing.assert_array_equal(store.coords[...], grid.coords[keep])
    np.testing.assert_array_equal(store.tissue_fraction[...], grid.tissue_fraction[keep])
    for index in (0, store.n_tiles // 2, store.n_tiles - 1):
        x, y = store.coords[index]
        np.testing.assert_array_equal(store.tiles[index], reader.read_at_mpp((x, y), (32, 32), 0.5))


def test_overlapping_tiles_start_half_an_overlap_out_with_white_beyond_the_slide(cmu_small_svs, tmp_path):
    tile_run(
        TileConfig(
            slide=cmu_small_svs, output=tmp_path / "o.zarr", **{**OPTIONS, "tissue_threshold": 0.0, "overlap": 8}
        )
    )
    store = open_tile_store(tmp_path / "o.zarr")
    reader = open_slide(cmu_small_svs)
    assert tuple(store.coords[0]) == (-4, -4)  # 4 tile px of 0.5 µm = round(4 * 0.5 / 0.499) level-0 px
    first = store.tiles[0]
    assert (first[:4] == 255).all() and (first[:, :4] == 255).all() and (first[4:, 4:] < 255).any()
    np.testing.assert_array_equal(first, reader.read_at_mpp((-4, -4), (32, 32), 0.5))
    last = store.n_tiles - 1
    x, y = store.coords[last]
    width, height = reader.dimensions
    assert (
        x + 32 * 0.5 / 0.499 >= width + 4 and y + 32 * 0.5 / 0.499 >= height + 4
    )  # half an overlap past the far edges


def test_interrupted_run_resumes_to_an_identical_store(cmu_small_svs, reference_store, tmp_path, monkeypatch):
    path = tmp_path / "cmu.zarr"
    real_shard = tiling._ShardWork.__call__
    calls = []

    def interrupt_after_three(work, index, *args):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(index)
        return real_shard(work, index, *args)

    monkeypatch.setattr(tiling._ShardWork, "__call__", interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        tile_run(TileConfig(slide=cmu_small_svs, output=path, readers=1, **OPTIONS))
    partial = tmp_path / "cmu.zarr.partial"
    assert not path.exists()
    assert (partial / JOURNAL_NAME).read_text().split() == ["0", "1", "2"]
    with pytest.raises(StoreError, match="incomplete|unfinished"):
        open_tile_store(path)

    monkeypatch.setattr(
        tiling._ShardWork,
        "__call__",
        lambda work, index, *args: (calls.append(index), real_shard(work, index, *args))[1],
    )
    result = tile_run(TileConfig(slide=cmu_small_svs, output=path, readers=1, **OPTIONS))
    n_shards = open_tile_store(path).n_shards
    assert calls[3:] == list(range(3, n_shards))  # only the unfinished shards were redone
    assert result.n_written == result.n_tiles - 3 * open_tile_store(path).tiles_per_shard
    _assert_same_store(path, reference_store)


def test_killed_run_resumes_to_an_identical_store(cmu_small_svs, reference_store, tmp_path):
    """SIGKILL (no clean-up at all) a CLI run once a few shards are journalled, then rerun."""
    path = tmp_path / "cmu.zarr"
    slow = (
        "import time, wsipipe.tiling as t; real = t._ShardWork.__call__\n"
        "t._ShardWork.__call__ = lambda *a: (time.sleep(0.3), real(*a))[1]\n"
        "from wsipipe.cli.main import app; app()\n"
    )
    argv = [
        "tile",
        str(cmu_small_svs),
        "-o",
        str(path),
        "--tile-size",
        "32",
        "--workers",
        "1",
        "--quiet",
        "--qc",
        "off",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", slow, *argv], env=env, cwd=tmp_path)
    journal = tmp_path / "cmu.zarr.partial" / JOURNAL_NAME
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (journal.exists() and len(journal.read_text().split()) >= 2):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not path.exists() and 2 <= len(journal.read_text().split()) < 16

    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    _assert_same_store(path, reference_store)


def test_complete_store_is_not_redone(reference_store, cmu_small_svs):
    shard = next((reference_store / "tiles" / "c").iterdir())
    before = shard.stat().st_mtime_ns
    argv = ["tile", str(cmu_small_svs), "-o", str(reference_store), "--tile-size", "32", "--quiet", "--qc", "off"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0 and "already complete" in result.output
    assert shard.stat().st_mtime_ns == before


def test_other_parameters_are_refused_and_overwrite_replaces(cmu_small_svs, tmp_path):
    path = tmp_path / "cmu.zarr"
    runner = CliRunner()
    base = ["tile", str(cmu_small_svs), "-o", str(path), "--quiet", "--workers", "1"]
    assert runner.invoke(app, [*base, "--tile-size", "256"]).exit_code == 0
    refused = runner.invoke(app, [*base, "--tile-size", "512", "--tissue-threshold", "0.5"])
    assert refused.exit_code == 2
    assert "other parameters" in refused.output and "tile_size was 256, now 512" in refused.output
    assert "tissue_threshold was 0.1, now 0.5" in refused.output and "--overwrite" in refused.output
    assert open_tile_store(path).tile_size == 256
    replaced = runner.invoke(app, [*base, "--tile-size", "512", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    store = open_tile_store(path)
    assert store.tile_size == 512 and store.tiles.shape[1] == 512
    assert not (tmp_path / "cmu.zarr.partial").exists()


def test_changed_slide_is_refused(cmu_small_svs, tmp_path):
    slide = tmp_path / "copy.svs"
    slide.write_bytes(cmu_small_svs.read_bytes())
    path = tmp_path / "cmu.zarr"
    tile_run(TileConfig(slide=slide, output=path, readers=1, **OPTIONS))
    os.utime(slide, (time.time() + 100, time.time() + 100))
    with pytest.raises(StoreError, match="slide_mtime"):
        tile_run(TileConfig(slide=slide, output=path, readers=1, **OPTIONS))


def test_derived_store_copies_geometry_and_resumes(reference_store, tmp_path):
    source = open_tile_store(reference_store)
    path = tmp_path / "norm.zarr"
    writer = create_derived_store(source, path, stage="normalize", params={"method": "invert"})
    assert writer.pending_shards() == list(range(source.n_shards))
    first = source.shard_slice(0)
    writer.write_shard(0, 255 - source.tiles[first])
    resumed = create_derived_store(source, path, stage="normalize", params={"method": "invert"})
    assert resumed.pending_shards() == list(range(1, source.n_shards))
    with pytest.raises(StoreError, match="method was 'invert', now 'other'"):
        create_derived_store(source, path, stage="normalize", params={"method": "other"})
    for index in resumed.pending_shards():
        resumed.write_shard(index, 255 - source.tiles[source.shard_slice(index)])
    store = resumed.finish()
    np.testing.assert_array_equal(store.tiles[...], 255 - source.tiles[...])
    for name in ("coords", "tissue_fraction", "thumbnail", "tissue_mask"):
        np.testing.assert_array_equal(store.group[name][...], source.group[name][...])
    assert store.meta["stage"] == "normalize" and store.meta["complete"]
    assert store.meta["params"]["source"]["params"] == source.meta["params"]
    assert store.mpp == source.mpp and store.tile_size == source.tile_size


def test_ctrl_c_with_worker_threads_exits_130_and_resumes(cmu_small_svs, tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it."""
    path = tmp_path / "cmu.zarr"
    argv = [
        sys.executable,
        "-m",
        "wsipipe",
        "tile",
        str(cmu_small_svs),
        "-o",
        str(path),
        "--tile-size",
        "16",
        "--tissue-threshold",
        "0",
        "--workers",
        "2",
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        argv,
        env=env,
        start_new_session=True,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=foreground_ctrl_c,
    )
    journal = tmp_path / "cmu.zarr.partial" / JOURNAL_NAME
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (journal.exists() and len(journal.read_text().split()) >= 2):
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip() == "Interrupted; run the same command again to resume."
    done = len(journal.read_text().split())
    assert not path.exists() and done >= 2

    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    store = open_tile_store(path)
    assert f"wrote {store.n_tiles} tiles" in rerun.stdout
    assert f"({store.n_tiles - done * store.tiles_per_shard} this run" in rerun.stdout


def test_store_files_written_directly_are_what_zarr_writes(tmp_path):
    """Metadata, small arrays and shard files are written without zarr (for speed); zarr itself
    must write the same: equal JSON for the metadata, identical bytes for the chunks."""
    import json

    from zarr.codecs import BloscCodec

    from wsipipe.store import ShardWriter, _small_array, _write_array_meta

    blosc = BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")
    rng = np.random.default_rng(0)
    size, per_shard, count = 256, 8, 20  # tile-sized chunks: Blosc picks its block size from the chunk size
    tiles = rng.integers(0, 255, (count, size, size, 3), dtype=np.uint8)
    tiles[3] = 0  # a chunk equal to the fill value is left out by both
    masks = (rng.random((count, size, size)) < 0.3).astype(np.uint8)
    fractions = rng.random((count, 2)).astype(np.float32)
    coords = rng.integers(0, 10**6, (count, 2)).astype(np.int64)

    by_zarr = zarr.open_group(str(tmp_path / "zarr"), mode="w", zarr_format=3)
    by_zarr.create_array(
        "tiles",
        shape=tiles.shape,
        chunks=(1, size, size, 3),
        shards=(per_shard, size, size, 3),
        dtype="uint8",
        compressors=blosc,
        fill_value=0,
        dimension_names=("tile", "y", "x", "channel"),
    )
    by_zarr.create_array(
        "masks",
        shape=masks.shape,
        chunks=(1, size, size),
        shards=(per_shard, size, size),
        dtype="uint8",
        compressors=blosc,
        fill_value=0,
        dimension_names=("tile", "y", "x"),
    )
    by_zarr.create_array(
        "label_fractions",
        shape=fractions.shape,
        chunks=(per_shard, 2),
        dtype="float32",
        compressors=blosc,
        fill_value=0,
        dimension_names=("tile", "label"),
    )
    by_zarr.create_array(
        "coords", shape=coords.shape, chunks=coords.shape, dtype="int64", compressors=blosc, fill_value=0
    )
    by_zarr["tiles"][:], by_zarr["masks"][:], by_zarr["label_fractions"][:] = tiles, masks, fractions
    by_zarr["coords"][:] = coords

    direct = tmp_path / "direct"
    direct.mkdir()
    _write_array_meta(
        direct / "tiles",
        tiles.shape,
        np.uint8,
        (per_shard, size, size, 3),
        (1, size, size, 3),
        ("tile", "y", "x", "channel"),
    )
    _write_array_meta(
        direct / "masks", masks.shape, np.uint8, (per_shard, size, size), (1, size, size), ("tile", "y", "x")
    )
    _write_array_meta(
        direct / "label_fractions", fractions.shape, np.float32, (per_shard, 2), dimension_names=("tile", "label")
    )
    _small_array(direct / "coords", coords)
    writer = ShardWriter(str(direct), per_shard)
    for index in range(3):
        rows = slice(index * per_shard, (index + 1) * per_shard)
        writer.write(index, tiles[rows], masks[rows], fractions[rows])

    def files(root):
        return sorted(
            p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.relative_to(root) != Path("zarr.json")
        )

    assert files(tmp_path / "zarr") == files(direct)
    for relative in files(direct):
        a, b = (tmp_path / "zarr" / relative).read_bytes(), (direct / relative).read_bytes()
        if relative.name == "zarr.json":
            assert json.loads(a) == json.loads(b), relative
        else:
            assert a == b, relative


def test_worker_threads_give_the_same_tiles_with_a_shared_or_a_per_thread_reader(tmp_path, cmu_small_svs):
    """openslide's reader is shared by the threads, tiffslide's is opened once per thread."""
    slide = cmu_small_svs
    options = {"tile_size": 128, "level": 0, "tissue_threshold": 0.0, "qc": "off"}
    tile_run(TileConfig(slide=slide, output=tmp_path / "one.zarr", readers=1, backend="openslide", **options))
    tile_run(TileConfig(slide=slide, output=tmp_path / "shared.zarr", readers=2, backend="openslide", **options))
    tile_run(TileConfig(slide=slide, output=tmp_path / "per-thread.zarr", readers=2, backend="tiffslide", **options))
    one = open_tile_store(tmp_path / "one.zarr").tiles[...]
    assert open_tile_store(tmp_path / "shared.zarr").tiles[...].tobytes() == one.tobytes()
    assert open_tile_store(tmp_path / "per-thread.zarr").tiles[...].tobytes() == one.tobytes()


def test_one_run_per_store_other_stores_go_on_and_no_stale_partial_stays(cmu_small_svs, tmp_path, hold_folder_lock):
    path = tmp_path / "cmu.zarr"
    argv = ["tile", str(cmu_small_svs), "-o", str(path), "--tile-size", "256", "--quiet", "--workers", "1"]
    holder = hold_folder_lock(tmp_path, ".cmu.zarr.lock")  # as a run writing this store holds it
    busy = CliRunner().invoke(app, argv)
    assert busy.exit_code == 1 and busy.output.splitlines() == [
        f"Error: {path}: another wsipipe run is writing this store"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cmu.zarr.lock"]
    other = CliRunner().invoke(
        app, ["tile", str(cmu_small_svs), "-o", str(tmp_path / "other.zarr"), "--tile-size", "256", "--quiet"]
    )
    assert other.exit_code == 0, other.output  # another store of the same folder is not held up
    holder.kill()
    holder.wait()
    assert CliRunner().invoke(app, argv).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmu.zarr", "other.zarr"]  # no partial, no lock file
    # A stale partial beside the complete store (as two unlocked runs left one) goes with the next run.
    shutil.copytree(path, tmp_path / "cmu.zarr.partial")
    again = CliRunner().invoke(app, argv)
    assert again.exit_code == 0 and "already complete" in again.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmu.zarr", "other.zarr"]
