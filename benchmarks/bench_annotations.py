"""Benchmark: streaming a 200 000-polygon ASAP file, and per-tile masks with vs without the STRtree.

Run from the repository root: ``python benchmarks/bench_annotations.py [--polygons N] [--tiles N]``.
The synthetic ASAP file goes to a temporary folder and is deleted afterwards. Parse time is the
median of ``--repeats`` runs; peak memory is the process's peak RSS over the first parse minus
the RSS before it, next to what the parsed annotations themselves keep (the rest is parser
overhead, which stays small because elements are cleared as they are read). Two baselines
test every polygon against each tile without an index and burn the hits with the same code: a
vectorised scan (one ``shapely.intersects`` call over all polygons, the strongest index-free
rasteriser) and the plain per-polygon loop (``polygon.intersects(tile)`` for each polygon, what
index-free code usually does). They run on a subset of tiles and are extrapolated per tile. The
last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsipipe.annotations import TileRasteriser, read_annotations

SPACING = 100  # level-0 px between polygon centres
RADIUS = 30
VERTICES = 8


def write_asap(path: Path, count: int) -> tuple[int, int]:
    """A grid of ``count`` octagons (every 10th in group Stroma); returns the field's size."""
    columns = math.ceil(math.sqrt(count * 1.25))
    rng = np.random.default_rng(0)
    angles = np.linspace(0, 2 * np.pi, VERTICES, endpoint=False)
    with open(path, "w") as out:
        out.write('<?xml version="1.0"?>\n<ASAP_Annotations>\n\t<Annotations>\n')
        for index in range(count):
            cx = (index % columns + 0.5) * SPACING
            cy = (index // columns + 0.5) * SPACING
            radius = RADIUS * rng.uniform(0.6, 1.4)
            group = "Stroma" if index % 10 == 0 else "Tumor"
            out.write(
                f'\t\t<Annotation Name="Annotation {index}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">\n\t\t\t<Coordinates>\n'
            )
            for order, angle in enumerate(angles):
                out.write(
                    f'\t\t\t\t<Coordinate Order="{order}" X="{cx + radius * math.cos(angle):.4f}" Y="{cy + radius * math.sin(angle):.4f}" />\n'
                )
            out.write("\t\t\t</Coordinates>\n\t\t</Annotation>\n")
        out.write("\t</Annotations>\n\t<AnnotationGroups>\n")
        out.write('\t\t<Group Name="Tumor" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>\n')
        out.write('\t\t<Group Name="Stroma" PartOfGroup="None" Color="#00FF00"><Attributes /></Group>\n')
        out.write("\t</AnnotationGroups>\n</ASAP_Annotations>\n")
    rows = math.ceil(count / columns)
    return columns * SPACING, rows * SPACING


class LinearScan:
    """Stands in for the STRtree: one vectorised test of every polygon against the query box."""

    def __init__(self, polygons):
        self.polygons = polygons

    def query(self, box):
        return np.flatnonzero(shapely.intersects(self.polygons, box))


class PolygonLoop(LinearScan):
    """Stands in for the STRtree: each polygon tested against the query box in turn."""

    def query(self, box):
        return np.array([i for i, polygon in enumerate(self.polygons) if polygon.intersects(box)], np.int64)


def median_ms_per_tile(rasteriser, scan, tiles, reference, args) -> float:
    """Time ``rasteriser`` with ``scan`` in place of its index; masks must equal ``reference``."""
    index, rasteriser._tree = rasteriser._tree, scan
    times = []
    try:
        for tile in tiles:
            start = time.perf_counter()
            mask = rasteriser.tile_mask(*tile, args.tile_extent, args.tile_size)
            times.append(time.perf_counter() - start)
            assert np.array_equal(mask, reference[tile]), "the methods must give the same mask"
    finally:
        rasteriser._tree = index
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polygons", type=int, default=200_000)
    parser.add_argument("--tiles", type=int, default=2_000)
    parser.add_argument("--baseline-tiles", type=int, default=40)
    parser.add_argument("--loop-tiles", type=int, default=5, help="tiles timed with the per-polygon loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tile-extent", type=int, default=1024, help="level-0 px per tile side")
    parser.add_argument("--tile-size", type=int, default=256, help="mask pixels per tile side")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    process = psutil.Process()

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "synthetic_asap.xml"
        start = time.perf_counter()
        width, height = write_asap(path, args.polygons)
        size_mb = path.stat().st_size / 1e6
        print(f"generated {args.polygons} polygons, {size_mb:.0f} MB ASAP XML in {time.perf_counter() - start:.1f} s")

        rss_before = process.memory_info().rss
        parse_times = []
        annotations = None
        for repeat in range(args.repeats):
            if repeat == 1:
                peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                kept_rss = process.memory_info().rss
            annotations = None
            start = time.perf_counter()
            annotations = read_annotations(path)
            parse_times.append(time.perf_counter() - start)
        if args.repeats == 1:
            peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            kept_rss = process.memory_info().rss
    assert len(annotations) == args.polygons
    parse_s = statistics.median(parse_times)
    peak_mb = (peak_rss - rss_before) / 1e6
    kept_mb = (kept_rss - rss_before) / 1e6
    print(f"parse: median {parse_s:.2f} s of {args.repeats} ({args.polygons / parse_s:,.0f} polygons/s)")
    print(
        f"memory: peak RSS +{peak_mb:.0f} MB during the first parse, +{kept_mb:.0f} MB kept by the "
        f"parsed annotations, parser overhead {max(peak_mb - kept_mb, 0):.0f} MB, file {size_mb:.0f} MB"
    )

    start = time.perf_counter()
    rasteriser = TileRasteriser(annotations, "Tumor=1,Stroma=2")
    build_s = time.perf_counter() - start
    print(f"index: built over {len(rasteriser)} polygons in {build_s:.2f} s")

    columns = max(1, round(math.sqrt(args.tiles * width / height)))
    rows = math.ceil(args.tiles / columns)
    grid = [(c * args.tile_extent, r * args.tile_extent) for r in range(rows) for c in range(columns)][: args.tiles]
    indexed = []
    burned = 0
    for x0, y0 in grid:
        start = time.perf_counter()
        mask = rasteriser.tile_mask(x0, y0, args.tile_extent, args.tile_size)
        indexed.append(time.perf_counter() - start)
        burned += int(np.count_nonzero(mask))
    indexed_total = sum(indexed)
    indexed_tile = statistics.median(indexed)

    step = max(1, len(grid) // args.baseline_tiles)
    subset = grid[::step][: args.baseline_tiles]
    reference = {tile: rasteriser.tile_mask(*tile, args.tile_extent, args.tile_size) for tile in subset}
    scan_ms = median_ms_per_tile(rasteriser, LinearScan(rasteriser._polygons), subset, reference, args)
    loop_ms = median_ms_per_tile(
        rasteriser, PolygonLoop(rasteriser._polygons), subset[: args.loop_tiles], reference, args
    )
    indexed_ms = indexed_tile * 1e3
    print(
        f"tiles: {len(grid)} tiles of {args.tile_extent} level-0 px -> {args.tile_size} px masks, "
        f"{burned / (len(grid) * args.tile_size**2):.1%} of pixels labelled"
    )
    print(f"indexed (STRtree): {indexed_total:.2f} s for {len(grid)} tiles, median {indexed_ms:.2f} ms/tile")
    print(
        f"baseline, vectorised scan of every polygon: median {scan_ms:.2f} ms/tile on {len(subset)} tiles "
        f"(~{scan_ms * len(grid) / 1e3:.0f} s for {len(grid)} tiles): {scan_ms / indexed_ms:.1f}x slower"
    )
    print(
        f"baseline, per-polygon loop: median {loop_ms:.0f} ms/tile on {min(len(subset), args.loop_tiles)} tiles "
        f"(~{loop_ms * len(grid) / 1e3:.0f} s for {len(grid)} tiles): {loop_ms / indexed_ms:.0f}x slower"
    )
    print(
        f"speed-up of the index: {loop_ms / indexed_ms:.0f}x over the per-polygon loop, "
        f"{scan_ms / indexed_ms:.1f}x over the vectorised scan (target >= 20x); masks identical"
    )
    print(
        json.dumps(
            {
                "polygons": args.polygons,
                "file_mb": round(size_mb, 1),
                "parse_s_median": round(parse_s, 3),
                "polygons_per_s": round(args.polygons / parse_s),
                "peak_rss_mb": round(peak_mb, 1),
                "kept_rss_mb": round(kept_mb, 1),
                "index_build_s": round(build_s, 3),
                "tiles": len(grid),
                "indexed_total_s": round(indexed_total, 3),
                "indexed_ms_per_tile_median": round(indexed_tile * 1e3, 3),
                "scan_tiles_measured": len(subset),
                "scan_ms_per_tile_median": round(scan_ms, 3),
                "loop_tiles_measured": min(len(subset), args.loop_tiles),
                "loop_ms_per_tile_median": round(loop_ms, 1),
                "speedup_vs_loop": round(loop_ms / indexed_ms, 1),
                "speedup_vs_scan": round(scan_ms / indexed_ms, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
