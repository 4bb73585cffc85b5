"""Benchmark: Deep Zoom tiles served by ``wsipipe view`` against openslide's own DeepZoomGenerator.

Run from the repository root: ``python benchmarks/bench_view.py [--slide PATH] [--views N]``.
Without ``--slide`` a 40 000 x 32 000 px synthetic slide (``wsipipe synth``) is written to a
temporary folder first (about two minutes) and deleted afterwards.

A seeded random walk of ``--views`` pan/zoom views (a 1280 x 800 px window at a random Deep Zoom
level and place) gives the tiles a browser would ask for, in order. The same tile sequence is then
served twice by each side, in this process:

- wsipipe: HTTP GETs to a running viewer (one keep-alive connection, one request at a time), so
  its figures include HTTP; the first pass starts with an empty tile cache (cold), the second
  finds every tile cached (warm);
- openslide: ``DeepZoomGenerator.get_tile`` plus JPEG encoding (PIL, the same quality) on a
  freshly opened slide (cold), then again on the same object (warm: openslide's own tile cache).

Tiles/s is tiles over wall time; latency is per request (p50 and p95). The last line is one JSON
object with the figures.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsipipe.view import open_view
from wsipipe.view.deepzoom import JPEG_QUALITY, OVERLAP, TILE_SIZE, DeepZoomGrid

WINDOW = (1280, 800)
#: Views are drawn from the finest this many Deep Zoom levels (coarser ones are a few tiles).
ZOOM_LEVELS = 7


def view_tiles(grid: DeepZoomGrid, views: int, seed: int) -> list[tuple[int, int, int]]:
    """The tiles of ``views`` random windows: a pan/zoom walk, each window's tiles in row order."""
    rng = random.Random(seed)
    tiles = []
    for _ in range(views):
        level = rng.randint(grid.max_level - ZOOM_LEVELS + 1, grid.max_level)
        width, height = grid.level_size(level)
        x = rng.uniform(0, max(0, width - WINDOW[0]))
        y = rng.uniform(0, max(0, height - WINDOW[1]))
        cols, rows = grid.tile_count(level)
        for row in range(int(y // TILE_SIZE), min(rows, math.ceil((y + WINDOW[1]) / TILE_SIZE))):
            for col in range(int(x // TILE_SIZE), min(cols, math.ceil((x + WINDOW[0]) / TILE_SIZE))):
                tiles.append((level, col, row))
    return tiles


def serve_pass(connection: http.client.HTTPConnection, tiles) -> tuple[float, list[float]]:
    latencies = []
    started = time.perf_counter()
    for level, col, row in tiles:
        t0 = time.perf_counter()
        connection.request("GET", f"/s/0/slide_files/{level}/{col}_{row}.jpeg")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200 or not body:
            raise RuntimeError(f"tile {level}/{col}_{row}: HTTP {response.status}")
        latencies.append(time.perf_counter() - t0)
    return time.perf_counter() - started, latencies


def openslide_pass(generator, tiles) -> tuple[float, list[float]]:
    latencies = []
    started = time.perf_counter()
    for level, col, row in tiles:
        t0 = time.perf_counter()
        buffer = io.BytesIO()
        generator.get_tile(level, (col, row)).save(buffer, "jpeg", quality=JPEG_QUALITY)
        latencies.append(time.perf_counter() - t0)
    return time.perf_counter() - started, latencies


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def run(slide: Path, views: int, seed: int) -> dict:
    from openslide import OpenSlide
    from openslide.deepzoom import DeepZoomGenerator

    figures: dict = {"benchmark": "view", "slide": slide.name}
    server = open_view(slide, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        grid = server.sources[0].tiles(server.cache).grid
        tiles = view_tiles(grid, views, seed)
        figures.update(
            {
                "width": grid.width,
                "height": grid.height,
                "views": views,
                "tiles": len(tiles),
                "distinct_tiles": len(set(tiles)),
            }
        )
        connection = http.client.HTTPConnection(*server.server_address[:2], timeout=120)
        for name in ("cold", "warm"):
            seconds, latencies = serve_pass(connection, tiles)
            figures[f"wsipipe_{name}_tiles_per_s"] = len(tiles) / seconds
            figures[f"wsipipe_{name}_p50_ms"] = 1000 * statistics.median(latencies)
            figures[f"wsipipe_{name}_p95_ms"] = 1000 * p95(latencies)
        connection.close()
    finally:
        server.shutdown()
        thread.join()
        server.close()
    generator = DeepZoomGenerator(OpenSlide(str(slide)), tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False)
    for name in ("cold", "warm"):
        seconds, latencies = openslide_pass(generator, tiles)
        figures[f"openslide_{name}_tiles_per_s"] = len(tiles) / seconds
        figures[f"openslide_{name}_p95_ms"] = 1000 * p95(latencies)
    for name in ("cold", "warm"):
        figures[f"ratio_{name}"] = figures[f"wsipipe_{name}_tiles_per_s"] / figures[f"openslide_{name}_tiles_per_s"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slide", type=Path, help="Slide to serve (default: a synthetic 40 000 x 32 000 px slide).")
    parser.add_argument("--views", type=int, default=40, help="Random pan/zoom views (default 40).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-view-") as folder:
        slide = args.slide
        if slide is None:
            from wsipipe.slide.synthetic import SyntheticSpec, write_synthetic_slide

            print("writing a 40 000 x 32 000 px synthetic slide ...", flush=True)
            slide = write_synthetic_slide(Path(folder) / "synthetic-40k.tif", SyntheticSpec(40000, 32000))
        figures = run(slide, args.views, args.seed)
    print(
        f"{figures['slide']}: {figures['width']} x {figures['height']} px, {figures['views']} views, "
        f"{figures['tiles']} tile requests ({figures['distinct_tiles']} distinct)"
    )
    for side in ("wsipipe", "openslide"):
        for name in ("cold", "warm"):
            print(
                f"  {side:9s} {name}: {figures[f'{side}_{name}_tiles_per_s']:8.1f} tiles/s, "
                f"p95 {figures[f'{side}_{name}_p95_ms']:7.2f} ms"
            )
    print(
        f"  wsipipe / openslide: cold {figures['ratio_cold']:.2f}x, warm {figures['ratio_warm']:.2f}x (target >= 1.5x)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
