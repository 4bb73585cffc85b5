"""Reading a tile store item by item: ``wsipipe.data.TileStoreDataset`` against zarr.

On stores tiled from a synthetic slide (8192 px square at 0.5 µm/px) at 256 and 512 px, ms per
tile of:
- the dataset, in store order and in a shuffled order (what a training ``DataLoader`` asks);
- zarr's array API one item per call (``tiles[i]``), the baseline: what a Dataset over zarr does;
- zarr one whole shard per call (``tiles[shard]``), the best case of a reader that may load a
  shard at a time (``normalize`` does), which a shuffled order cannot use;
and the peak Python memory (tracemalloc) of a dataset pass against the store's raw tile bytes.
Medians of interleaved repeats. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wsipipe.data import TileStoreDataset  # noqa: E402
from wsipipe.slide.synthetic import SyntheticSpec, write_synthetic_slide  # noqa: E402
from wsipipe.store import open_tile_store  # noqa: E402
from wsipipe.tiling import tile_slide  # noqa: E402


def _interleaved_ms_per_tile(runs: dict, n_tiles: int, repeats: int) -> dict:
    """Median ms per tile of each run, the runs taking turns (a shared machine's load hits all alike)."""
    times = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up: imports, page cache
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) / n_tiles for name, t in times.items()}


def _measure(store_path: Path, repeats: int) -> dict:
    store = open_tile_store(store_path)
    tiles, n = store.tiles, store.n_tiles
    order = np.random.default_rng(0).permutation(n).tolist()

    def dataset_pass(indices):
        # A fresh dataset each pass (no shard index kept from the last), opened before the clock starts.
        datasets = iter([TileStoreDataset(store_path) for _ in range(repeats + 1)])
        return lambda: [dataset[i] for dataset in [next(datasets)] for i in indices]

    runs = {
        "dataset_in_order": dataset_pass(range(n)),
        "dataset_shuffled": dataset_pass(order),
        "zarr_per_item_shuffled": lambda: [tiles[i] for i in order],
        "zarr_per_shard_in_order": lambda: [tiles[store.shard_slice(s)] for s in range(store.n_shards)],
    }
    result = _interleaved_ms_per_tile(runs, n, repeats)
    dataset = TileStoreDataset(store_path)
    dataset[0]
    tracemalloc.start()
    for i in order:
        dataset[i]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "tile_size": store.tile_size,
        "tiles": n,
        "tiles_per_shard": store.tiles_per_shard,
        "ms_per_tile": result,
        "zarr_per_item_over_dataset_shuffled": result["zarr_per_item_shuffled"] / result["dataset_shuffled"],
        "peak_python_mib": peak / 2**20,
        "store_tile_mib": n * store.tile_size**2 * 3 / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        slide = write_synthetic_slide(folder / "synthetic.tif", SyntheticSpec(8192, 8192, mpp=0.5, seed=0))
        figures = []
        for tile_size in (256, 512):
            store = folder / f"tiles{tile_size}.zarr"
            tile_slide(slide, store, mpp=0.5, tile_size=tile_size, progress=False)
            figures.append(_measure(store, args.repeats))
    for f in figures:
        ms = f["ms_per_tile"]
        print(
            f"{f['tile_size']} px, {f['tiles']} tiles ({f['tiles_per_shard']} a shard): dataset {ms['dataset_in_order']:.3f} ms/tile "
            f"in order, {ms['dataset_shuffled']:.3f} shuffled; zarr per item {ms['zarr_per_item_shuffled']:.3f} "
            f"({f['zarr_per_item_over_dataset_shuffled']:.1f}x the dataset), zarr per shard {ms['zarr_per_shard_in_order']:.3f}; "
            f"peak {f['peak_python_mib']:.2f} MiB for {f['store_tile_mib']:.0f} MiB of tiles"
        )
    print(json.dumps({"benchmark": "data", "stores": figures}))


if __name__ == "__main__":
    main()
