"""``wsipipe.data``: items equal the store's arrays (and openslide's pixels and the annotations),
reads touch one chunk of one shard, worker processes and shuffling change nothing, the examples run."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import openslide
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from wsipipe.data import TileStoreDataset, TileStoresDataset
from wsipipe.errors import InvalidInputError, StoreError
from wsipipe.stages import TileConfig, tile

REPO = Path(__file__).resolve().parents[1]
SLIDE = REPO / "examples" / "data" / "CMU-1-Small-Region.svs"
TILE = 64
# Two labelled rectangles in level-0 px (x0, y0, x1, y1); tiling at level 0, a tile's mask pixel
# (row, col) is the slide's pixel (y + row, x + col).
RECTANGLES = {"Tumor": (1, (300, 200, 1000, 900)), "Stroma": (2, (1200, 1500, 2000, 2600))}


def _geojson(path: Path) -> Path:
    features = [
        {
            "type": "Feature",
            "properties": {"classification": {"name": name}},
            "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
        }
        for name, (_, (x0, y0, x1, y1)) in RECTANGLES.items()
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """The bundled slide tiled at level 0 with the rectangles as annotations, without them, and at another tile size."""
    folder = tmp_path_factory.mktemp("stores")
    geojson = _geojson(folder / "rectangles.geojson")
    label_map = ",".join(f"{name}={value}" for name, (value, _) in RECTANGLES.items())
    common = {"slide": SLIDE, "level": 0, "qc": "off"}
    tile.run(
        TileConfig(output=folder / "annotated.zarr", tile_size=TILE, annotations=geojson, label_map=label_map, **common)
    )
    tile.run(TileConfig(output=folder / "plain.zarr", tile_size=TILE, tissue_threshold=0.5, **common))
    tile.run(TileConfig(output=folder / "large.zarr", tile_size=2 * TILE, **common))
    return {name: folder / f"{name}.zarr" for name in ("annotated", "plain", "large")}


def _expected_mask(x: int, y: int) -> np.ndarray:
    cols, rows = np.arange(x, x + TILE)[None, :], np.arange(y, y + TILE)[:, None]
    mask = np.zeros((TILE, TILE), np.uint8)
    for value, (x0, y0, x1, y1) in RECTANGLES.values():
        mask[(cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)] = value
    return mask


def test_items_equal_the_store_arrays(stores):
    group = zarr.open_group(str(stores["annotated"]), mode="r")
    tiles, masks, coords = group["tiles"][:], group["masks"][:], group["coords"][:]
    fractions, tissue = group["label_fractions"][:], group["tissue_fraction"][:]
    dataset = TileStoreDataset(stores["annotated"])
    assert len(dataset) == len(tiles) > 64  # several shards
    assert (dataset.label_names, dataset.label_values) == (["Tumor", "Stroma"], [1, 2])
    assert dataset.slide == "CMU-1-Small-Region" and dataset.tile_size == TILE
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["index"] == i and item["slide"] == "CMU-1-Small-Region"
        np.testing.assert_array_equal(item["image"], tiles[i])
        np.testing.assert_array_equal(item["mask"], masks[i])
        np.testing.assert_array_equal(item["coords"], coords[i])
        np.testing.assert_array_equal(item["label_fractions"], fractions[i])
        assert item["tissue_fraction"] == tissue[i]
    np.testing.assert_array_equal(dataset[-1]["image"], tiles[-1])
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_images_are_the_slide_at_the_coordinates_and_masks_the_annotations(stores):
    dataset = TileStoreDataset(stores["annotated"])
    slide = openslide.OpenSlide(str(SLIDE))
    labelled = {1: 0, 2: 0}
    for i in range(0, len(dataset), 7):
        item = dataset[i]
        x, y = (int(v) for v in item["coords"])
        rgba = np.asarray(slide.read_region((x, y), 0, (TILE, TILE)))
        region = np.where(rgba[..., 3:] == 0, 255, rgba[..., :3])  # beyond the slide's edge: white
        np.testing.assert_array_equal(item["image"], region)
        expected = _expected_mask(x, y)
        np.testing.assert_array_equal(item["mask"], expected)
        np.testing.assert_allclose(item["label_fractions"], [(expected == 1).mean(), (expected == 2).mean()])
        for value in labelled:
            labelled[value] += int((expected == value).any())
    slide.close()
    assert min(labelled.values()) > 0  # both labels met


def test_min_tissue_masks_and_name_options(stores):
    tissue = zarr.open_group(str(stores["annotated"]), mode="r")["tissue_fraction"][:]
    dataset = TileStoreDataset(stores["annotated"], min_tissue=0.9, masks=False, name="case 7")
    kept = np.flatnonzero(tissue >= 0.9)
    assert 0 < len(dataset) == len(kept) < len(tissue)
    item = dataset[3]
    assert item["index"] == kept[3] and item["tissue_fraction"] >= 0.9 and item["slide"] == "case 7"
    assert "mask" not in item and "label_fractions" in item
    plain = TileStoreDataset(stores["plain"])
    assert plain.label_names is None and set(plain[0]) == {"image", "coords", "tissue_fraction", "slide", "index"}
    with pytest.raises(InvalidInputError, match=r"^min_tissue must be between 0 and 1, got 1.5$"):
        TileStoreDataset(stores["plain"], min_tissue=1.5)
    with pytest.raises(StoreError, match="no such store"):
        TileStoreDataset(stores["plain"].with_name("missing.zarr"))


def test_transform_gets_the_item_and_its_result_is_the_item(stores):
    def flip(item):
        return item["image"][:, ::-1], item["mask"][:, ::-1]

    plain, flipped = TileStoreDataset(stores["annotated"]), TileStoreDataset(stores["annotated"], transform=flip)
    image, mask = flipped[5]
    np.testing.assert_array_equal(image, plain[5]["image"][:, ::-1])
    np.testing.assert_array_equal(mask, plain[5]["mask"][:, ::-1])


def _spy_preads(monkeypatch) -> list[tuple[str, int, int]]:
    """Every os.pread as (file, offset, bytes read); zarr's array reads fail the test."""
    reads, pread = [], os.pread

    def spy(fd, length, offset):
        data = pread(fd, length, offset)
        reads.append((os.readlink(f"/proc/self/fd/{fd}"), offset, len(data)))
        return data

    def no_zarr(*args):
        raise AssertionError("read through zarr")

    monkeypatch.setattr(os, "pread", spy)
    monkeypatch.setattr(zarr.Array, "__getitem__", no_zarr)
    return reads


def test_an_item_read_touches_one_chunk_of_its_shard(stores, monkeypatch):
    group = zarr.open_group(str(stores["annotated"]), mode="r")
    per_shard, masks = group["tiles"].shards[0], group["masks"][:]
    labelled = [i for i in range(per_shard, 2 * per_shard) if masks[i].any()]
    unlabelled = [i for i in range(per_shard, 2 * per_shard) if not masks[i].any()]
    dataset = TileStoreDataset(stores["annotated"])  # opening reads the small arrays through zarr
    reads = _spy_preads(monkeypatch)
    dataset[labelled[0]]
    root = stores["annotated"].resolve()
    assert {path for path, _, _ in reads} == {str(root / "tiles/c/1/0/0/0"), str(root / "masks/c/1/0/0")}
    for name, raw_size in (("tiles", TILE * TILE * 3), ("masks", TILE * TILE)):
        mine = [size for path, _, size in reads if f"/{name}/" in path]
        assert len(mine) == 2 and mine[0] == per_shard * 16 + 4  # the shard's index, then one chunk
        assert 0 < mine[1] < raw_size + 64
    reads.clear()
    item = dataset[unlabelled[0]]  # the same shard: its index is not read again
    assert [path for path, _, _ in reads] == [str(root / "tiles/c/1/0/0/0")]
    assert not item["mask"].any()  # a mask chunk of zeros is left out of the shard, as zarr does


def test_a_sequential_pass_reads_each_byte_once(stores, monkeypatch):
    dataset = TileStoreDataset(stores["annotated"])
    reads = _spy_preads(monkeypatch)
    for i in range(len(dataset)):
        dataset[i]
    files = sorted(
        p for name in ("tiles", "masks") for p in (stores["annotated"] / name / "c").rglob("*") if p.is_file()
    )
    per_file = {}
    for path, _, size in reads:
        per_file[path] = per_file.get(path, 0) + size
    # Chunks lie back to back, the index last: each shard's index parsed once, each chunk read once.
    assert per_file == {str(p.resolve()): p.stat().st_size for p in files}


def test_memory_stays_within_a_few_tiles(stores):
    dataset = TileStoreDataset(stores["annotated"])
    dataset[0]  # imports and the first shard's index
    tracemalloc.start()
    for i in range(len(dataset)):
        dataset[i]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    tile_bytes = TILE * TILE * 4  # a tile and its mask
    assert peak < 8 * tile_bytes, (peak, tile_bytes * len(dataset))


def _batches(dataset, workers: int) -> list[dict]:
    loader = DataLoader(
        dataset, batch_size=48, num_workers=workers, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    return list(loader)


def test_worker_processes_and_shuffling_give_the_same_items(stores):
    dataset = TileStoresDataset([stores["annotated"], stores["annotated"]], names=["a", "b"])
    dataset[0], dataset[len(dataset) - 1]  # files open in this process before the workers fork
    tiles = zarr.open_group(str(stores["annotated"]), mode="r")["tiles"][:]
    alone, workers = _batches(dataset, 0), _batches(dataset, 2)
    assert len(alone) == len(workers) == -(-len(dataset) // 48)
    for one, other in zip(alone, workers):
        assert one.keys() == other.keys() and one["slide"] == other["slide"]
        for key in ("image", "mask", "coords", "index", "label_fractions", "tissue_fraction"):
            torch.testing.assert_close(one[key], other[key], rtol=0, atol=0)
    seen = [(slide, int(index)) for batch in workers for slide, index in zip(batch["slide"], batch["index"])]
    assert sorted(seen) == [(name, i) for name in "ab" for i in range(len(tiles))] != seen  # each once, shuffled
    for batch in workers:
        np.testing.assert_array_equal(batch["image"].numpy(), tiles[batch["index"].numpy()])


def test_threads_reading_at_once_get_the_right_items(stores):
    from concurrent.futures import ThreadPoolExecutor

    dataset = TileStoreDataset(stores["annotated"])
    tiles = zarr.open_group(str(stores["annotated"]), mode="r")["tiles"][:]
    order = np.random.default_rng(1).permutation(len(dataset)).tolist()
    with ThreadPoolExecutor(4) as pool:  # each thread switches shards under the others' reads
        items = list(pool.map(dataset.__getitem__, order * 2))
    for i, item in zip(order * 2, items):
        np.testing.assert_array_equal(item["image"], tiles[i])


def test_pickling_carries_no_open_file(stores):
    dataset = TileStoreDataset(stores["annotated"])
    first = dataset[70]["image"]  # opens the second shard's files
    state = dataset.__getstate__()
    assert state["_local"] is None and dataset._local.readers
    copy = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(copy[70]["image"], first)


def test_other_array_layouts_are_read_through_zarr(stores, tmp_path):
    copy = tmp_path / "rewritten.zarr"
    shutil.copytree(stores["annotated"], copy)
    tiles = zarr.open_group(str(stores["annotated"]), mode="r")["tiles"][:]
    group = zarr.open_group(str(copy), mode="r+")
    del group["tiles"]
    group.create_array("tiles", data=tiles, chunks=(5, TILE, TILE, 3))  # zarr's defaults: no shards, Zstd
    dataset = TileStoreDataset(copy)
    for i in (0, 64, len(tiles) - 1):
        np.testing.assert_array_equal(dataset[i]["image"], tiles[i])
    assert type(dataset._local.readers["tiles"]).__name__ == "_ZarrItems"
    assert type(dataset._local.readers["masks"]).__name__ == "_ShardChunks"


def test_a_shard_without_a_file_reads_as_zeros_as_through_zarr(stores, tmp_path):
    copy = tmp_path / "sparse.zarr"
    shutil.copytree(stores["annotated"], copy)
    (copy / "masks" / "c" / "0" / "0" / "0").unlink()  # zarr writes no file for a shard of zeros
    masks = zarr.open_group(str(copy), mode="r")["masks"][:]
    dataset = TileStoreDataset(copy)
    for i in (0, 63, 64, 100):
        np.testing.assert_array_equal(dataset[i]["mask"], masks[i])
    assert not masks[:64].any() and masks[64:].any()


def test_a_damaged_shard_index_is_refused(stores, tmp_path):
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(stores["annotated"], copy)
    shard = copy / "tiles" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    dataset = TileStoreDataset(copy)
    dataset[0]
    with pytest.raises(StoreError, match=re.escape(f"{shard}: damaged shard (its chunk index fails its checksum)")):
        dataset[64]


def test_several_stores_concatenate_in_order_and_must_agree(stores):
    annotated, plain = TileStoreDataset(stores["annotated"]), TileStoreDataset(stores["plain"])
    both = TileStoresDataset([stores["annotated"], stores["annotated"]], names=["first", "second"], min_tissue=0.5)
    half = TileStoreDataset(stores["annotated"], min_tissue=0.5)
    assert len(both) == 2 * len(half) and both.slides == ["first", "second"]
    item = both[len(half) + 2]
    assert item["slide"] == "second" and item["index"] == half[2]["index"]
    np.testing.assert_array_equal(item["image"], half[2]["image"])
    assert len(TileStoresDataset([stores["plain"]])) == len(plain) < len(annotated)
    with pytest.raises(
        InvalidInputError,
        match=r"^paths: .*plain.zarr has labels None, .*annotated.zarr \['Tumor', 'Stroma'\]: tile the stores alike$",
    ):
        TileStoresDataset([stores["annotated"], stores["plain"]])
    with pytest.raises(
        InvalidInputError, match=r"^paths: .*large.zarr has tile size 128, .*plain.zarr 64: tile the stores alike$"
    ):
        TileStoresDataset([stores["plain"], stores["large"]])
    with pytest.raises(InvalidInputError, match=r"^names: 1 names for 2 stores$"):
        TileStoresDataset([stores["plain"], stores["plain"]], names=["x"])
    with pytest.raises(InvalidInputError, match=r"^paths: no tile stores given$"):
        TileStoresDataset([])


def test_the_example_trains_on_two_stores_with_workers(stores, tmp_path):
    second = tmp_path / "second.zarr"
    shutil.copytree(stores["annotated"], second)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "train_tiny.py"),
            str(stores["annotated"]),
            str(second),
            "--steps",
            "10",
            "--workers",
            "2",
            "--batch-size",
            "16",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [f"step {k}" for k in range(1, 11)]
    summary = json.loads(lines[-1])
    assert summary["task"] == "segmentation" and summary["tiles_seen"] == 10 * 16
    assert summary["slides"] == ["CMU-1-Small-Region"]
    assert summary["first_loss"] == pytest.approx(np.log(3), abs=0.2)  # three labels, untrained
    assert summary["last_loss"] < 0.75 * summary["first_loss"]


def test_the_example_learns_tissue_fractions_without_annotations(stores):
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import train_tiny
    finally:
        sys.path.remove(str(REPO / "examples"))
    summary = train_tiny.main(
        [str(stores["plain"]), "--steps", "6", "--workers", "0", "--batch-size", "8", "--min-tissue", "0.6"]
    )
    assert summary["task"] == "tissue fraction" and summary["tiles_seen"] == 6 * 8
    assert summary["last_loss"] < summary["first_loss"]


def test_the_api_docs_example_runs(stores, tmp_path, monkeypatch, capsys):
    text = (REPO / "docs" / "api.md").read_text()
    section = text.split("## Training data", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert blocks
    for name in ("slide.zarr", "other.zarr"):  # the names the docs use
        (tmp_path / name).symlink_to(stores["annotated"])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(block, namespace)  # noqa: S102 - the docs' own example
    assert capsys.readouterr().out.strip()


def test_spawned_workers_open_their_own_files(stores):
    dataset = TileStoreDataset(stores["annotated"], min_tissue=0.9)
    expected = [dataset[i]["image"] for i in range(len(dataset))]  # files open here before the spawn
    loader = DataLoader(dataset, batch_size=len(dataset), num_workers=1, multiprocessing_context="spawn")
    (batch,) = list(loader)
    np.testing.assert_array_equal(batch["image"].numpy(), np.stack(expected))
