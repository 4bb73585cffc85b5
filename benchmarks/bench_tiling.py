"""Tiling throughput and memory on a synthetic slide (issue #2's benchmark).

On a ~40 000 x 40 000 px synthetic slide at 0.25 µm/px with a 2x pyramid, tiling at 0.5 µm/px
with 512 px tiles, measures in one run:

- wsipipe: the tile command's work (``tile_slide``, what ``wsipipe tile`` runs: opening the slide,
  tissue detection, the grid, the store created, every tile read and written, the store
  finished), timed in this process like the two baselines, tiles/s; and the whole ``wsipipe
  tile`` command in a subprocess (interpreter start-up and imports included), tiles/s;
- plain: one process looping openslide ``read_region`` over the same tiles at
  ``get_best_level_for_downsample``, resizing where needed and converting to RGB (as CLAM and
  histolab do), tiles/s;
- decode limit: the same tiles' source JPEG tiles decoded with imagecodecs on all cores, nothing
  else, as output tiles/s;
- ratios wsipipe/plain and wsipipe/decode-limit (for the tile work and for the whole command),
  and peak RSS of the command (it and any child processes, summed, sampled with psutil);
- peak RSS of tiling ~20 000 px and ~80 000 px slides (the scale check; skip with
  ``--no-scale-check``);
- whether each target of the issue is met: >= 3x plain, >= 0.5x the decode limit, peak RSS under
  1.5 GiB, and on 80 000 px no larger than on 20 000 px (within ``RSS_NOISE``).

The targets are judged on the tile work: the baselines, too, are timed in-process without
their imports and without opening the slide. Interpreter start-up and imports (~0.3 s, whatever
the slide's size) are in the command's figure. Each run writes a new store (the previous one is
removed beforehand, untimed).
Synthetic slides are cached in the temp dir, keyed by their parameters and the generator's
source. Timings and RSS are medians of ``--repeats`` runs. The last line is one JSON object.

    PYTHONPATH=. python benchmarks/bench_tiling.py [--size 40000] [--repeats 3] [--no-scale-check]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wsipipe.slide.synthetic import SyntheticSpec, write_synthetic_slide  # noqa: E402

SLIDE_MPP = 0.25
TARGET_MPP = 0.5
TILE = 512
CACHE = Path(tempfile.gettempdir()) / "wsipipe-bench"
#: Relative RSS difference below which two peak RSS samples count as the same (50 ms sampling, allocator noise).
RSS_NOISE = 0.05


def synthetic_slide(side: int) -> Path:
    """A cached synthetic slide of side x side px; made anew when the generator's source changes."""
    spec = SyntheticSpec(side, side, mpp=SLIDE_MPP, tile_size=512, quality=90, seed=0)
    generator = hashlib.sha256((REPO / "wsipipe" / "slide" / "synthetic.py").read_bytes()).hexdigest()[:10]
    stem = f"synthetic-{side}x{side}-mpp{SLIDE_MPP}-t512-q90-seed0"
    path = CACHE / f"{stem}-{generator}.tif"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)  # other versions are left: other checkouts may share the cache
        start = time.perf_counter()
        write_synthetic_slide(path, spec)
        print(f"generated {path.name} in {time.perf_counter() - start:.1f} s", flush=True)
    return path


class PeakRss:
    """Samples the summed RSS of a process and all its descendants until stopped."""

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self._root = psutil.Process(pid)
        self._interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += proc.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self._interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_command(slide: Path, store: Path, workers: int) -> tuple[float, int, float]:
    """Seconds, peak RSS (bytes, all processes) and CPU seconds (all processes) of one ``wsipipe tile`` run."""
    command = [
        sys.executable,
        "-m",
        "wsipipe",
        "tile",
        str(slide),
        "-o",
        str(store),
        "--mpp",
        str(TARGET_MPP),
        "--tile-size",
        str(TILE),
        "--readers",
        str(workers),
        "--quiet",
    ]
    shutil.rmtree(store, ignore_errors=True)  # a new store each run: removing the last one is not tiling
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cpu_before = _children_cpu()
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = PeakRss(process.pid)
    out, err = process.communicate()
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    if process.returncode != 0:
        raise SystemExit(f"wsipipe tile failed ({process.returncode}): {err.strip() or out.strip()}")
    return seconds, peak, _children_cpu() - cpu_before


def run_stage(slide: Path, store: Path, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds (this process) of the tile stage, the work of one ``wsipipe tile --quiet --qc off`` run."""
    from wsipipe.stages import TileConfig, tile

    shutil.rmtree(store, ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    tile.run(TileConfig(slide=slide, output=store, mpp=TARGET_MPP, tile_size=TILE, readers=workers, qc="off"))
    return time.perf_counter() - start, time.process_time() - cpu


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes (and the children they waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def store_coords(store: Path) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(str(store), mode="r")["coords"][:])


def source_level(slide: Path) -> tuple[int, float, int]:
    """(level, level downsample, read size) the CLAM-style loop uses: openslide's best level."""
    import openslide

    with openslide.OpenSlide(str(slide)) as osr:
        downsample = TARGET_MPP / float(osr.properties[openslide.PROPERTY_NAME_MPP_X])
        level = osr.get_best_level_for_downsample(downsample)
        level_downsample = osr.level_downsamples[level]
    return level, level_downsample, round(TILE * downsample / level_downsample)


def run_plain(slide: Path, coords: np.ndarray) -> tuple[float, float]:
    """Wall and CPU seconds for the CLAM/histolab loop: openslide read_region at the best level, resize, RGB."""
    import openslide
    from PIL import Image

    level, _, size = source_level(slide)
    with openslide.OpenSlide(str(slide)) as osr:
        start, cpu = time.perf_counter(), time.process_time()
        for x, y in coords:
            tile = osr.read_region((int(x), int(y)), level, (size, size)).convert("RGB")
            if size != TILE:
                tile = tile.resize((TILE, TILE), Image.BILINEAR)
            np.asarray(tile)
        return time.perf_counter() - start, time.process_time() - cpu


def run_decode_limit(slide: Path, coords: np.ndarray, threads: int) -> tuple[float, float]:
    """Wall and CPU seconds to decode (imagecodecs, ``threads`` threads) the source tiles the output tiles cover.

    The tiles' bytes are read beforehand: only decoding is timed.
    """
    import imagecodecs
    import openslide
    import tifffile

    level, level_downsample, size = source_level(slide)
    with openslide.OpenSlide(str(slide)) as osr:
        width, height = osr.level_dimensions[level]
    with tifffile.TiffFile(slide) as tif:
        page = next(p for p in tif.pages if p.is_tiled and (p.imagewidth, p.imagelength) == (width, height))
        across = math.ceil(width / page.tilewidth)
        needed = []
        for x, y in coords:
            lx, ly = int(x / level_downsample), int(y / level_downsample)
            for ty in range(ly // page.tilelength, (min(ly + size, height) - 1) // page.tilelength + 1):
                for tx in range(lx // page.tilewidth, (min(lx + size, width) - 1) // page.tilewidth + 1):
                    needed.append(ty * across + tx)
        with open(slide, "rb") as fh:
            blobs = []
            for index in needed:
                fh.seek(page.dataoffsets[index])
                blobs.append(fh.read(page.databytecounts[index]))
    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(imagecodecs.jpeg8_decode, blobs):
            pass
    return time.perf_counter() - start, time.process_time() - cpu


def median(values):
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40000, help="Synthetic slide side (px).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per measurement (median).")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="wsipipe tile --readers.")
    parser.add_argument(
        "--no-scale-check", action="store_true", help="Skip comparing peak RSS on ~20k and ~80k px slides."
    )
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    slide = synthetic_slide(args.size)
    figures: dict = {
        "slide_px": args.size,
        "slide_mpp": SLIDE_MPP,
        "target_mpp": TARGET_MPP,
        "tile": TILE,
        "workers": args.workers,
        "cores": cores,
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        store = Path(scratch) / "tiles.zarr"
        commands = [run_command(slide, store, args.workers) for _ in range(args.repeats)]
        coords = store_coords(store)
        tiles = len(coords)
        stages = [run_stage(slide, store, args.workers) for _ in range(args.repeats)]
        plain = [run_plain(slide, coords) for _ in range(args.repeats)]
        decode = [run_decode_limit(slide, coords, cores) for _ in range(args.repeats)]
        wsipipe_tps = tiles / median([run[0] for run in stages])
        command_tps = tiles / median([run[0] for run in commands])
        plain_tps = tiles / median([run[0] for run in plain])
        decode_tps = tiles / median([run[0] for run in decode])
        peak_rss = max(run[1] for run in commands)
        # CPU per tile does not depend on what else the machine runs: a second view of the same work.
        cpu_ms = {
            name: 1000 * median([run[-1] for run in results]) / tiles
            for name, results in (
                ("wsipipe", stages),
                ("command", commands),
                ("plain", plain),
                ("decode_limit", decode),
            )
        }
        figures.update(
            tiles=tiles,
            wsipipe_tiles_per_s=round(wsipipe_tps, 1),
            command_tiles_per_s=round(command_tps, 1),
            plain_tiles_per_s=round(plain_tps, 1),
            decode_limit_tiles_per_s=round(decode_tps, 1),
            ratio_wsipipe_plain=round(wsipipe_tps / plain_tps, 2),
            ratio_wsipipe_decode_limit=round(wsipipe_tps / decode_tps, 2),
            ratio_command_plain=round(command_tps / plain_tps, 2),
            ratio_command_decode_limit=round(command_tps / decode_tps, 2),
            peak_rss_mib=round(peak_rss / 2**20, 1),
            cpu_ms_per_tile={name: round(value, 2) for name, value in cpu_ms.items()},
            load_average_1min=round(os.getloadavg()[0], 2),
        )
        print(f"tiles: {tiles} at {TARGET_MPP} µm/px, {TILE} px, slide {args.size} px")
        print(f"wsipipe tile work ({args.workers} workers): {wsipipe_tps:.1f} tiles/s")
        print(
            f"wsipipe tile command (start-up included): {command_tps:.1f} tiles/s, peak RSS {peak_rss / 2**20:.0f} MiB"
        )
        print(f"plain openslide loop:  {plain_tps:.1f} tiles/s")
        print(f"decode limit ({cores} threads): {decode_tps:.1f} tiles/s")
        print(
            f"wsipipe/plain {wsipipe_tps / plain_tps:.2f}x, wsipipe/decode-limit {wsipipe_tps / decode_tps:.2f}x "
            f"(command: {command_tps / plain_tps:.2f}x, {command_tps / decode_tps:.2f}x)"
        )
        print("CPU ms per tile: " + ", ".join(f"{name} {value:.1f}" for name, value in cpu_ms.items()))
        print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {cores} cores")
        if not args.no_scale_check:
            for side in (20000, 80000):
                big = synthetic_slide(side)
                scale_store = Path(scratch) / f"scale-{side}.zarr"
                scale_runs = [run_command(big, scale_store, args.workers) for _ in range(args.repeats)]
                count = len(store_coords(scale_store))
                figures[f"peak_rss_mib_{side}px"] = round(median([run[1] for run in scale_runs]) / 2**20, 1)
                figures[f"command_tiles_per_s_{side}px"] = round(count / median([run[0] for run in scale_runs]), 1)
                print(
                    f"scale check {side} px ({count} tiles): peak RSS {figures[f'peak_rss_mib_{side}px']:.0f} MiB, "
                    f"{figures[f'command_tiles_per_s_{side}px']} tiles/s"
                )
    targets = {
        "wsipipe_at_least_3x_plain": figures["ratio_wsipipe_plain"] >= 3,
        "wsipipe_at_least_half_decode_limit": figures["ratio_wsipipe_decode_limit"] >= 0.5,
        "peak_rss_under_1_5_gib": peak_rss < 1.5 * 2**30,
    }
    if not args.no_scale_check:
        small, large = figures["peak_rss_mib_20000px"], figures["peak_rss_mib_80000px"]
        targets["rss_80k_not_larger_than_20k"] = large <= small * (1 + RSS_NOISE)
        print(f"peak RSS 80 000 px vs 20 000 px: {large - small:+.1f} MiB ({100 * (large / small - 1):+.1f}%)")
    figures["targets_met"] = targets
    print("targets: " + ", ".join(f"{name} {'yes' if met else 'NO'}" for name, met in targets.items()))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
