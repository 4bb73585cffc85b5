"""Slides per hour of ``wsipipe batch`` with 1 and with 2 worker processes.

The batch is synthetic slides (``wsipipe.slide.synthetic``, from the bundled example's H&E
pixels, a different seed each) in a temporary folder, run with the heaviest job: ``segment`` on
the CPU with a small untrained U-Net written to the temporary folder (the work per tile is what
matters), or ``info`` with ``--job info``. Each cluster is started and
warmed up (modules imported on its workers) before timing, so the figures are throughput, not
start-up; the median of several runs is quoted. Target: 2 workers >= 1.7x one.

Usage: python benchmarks/bench_batch.py [--job segment|info] [--slides 8] [--size 6000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SLIDE_MPP = 0.5
# The benchmark model: 2 µm/px, 128 px tiles.
MODEL_MPP, MODEL_TILE, MODEL_ARGS = 2.0, 128, {"base": 16}


def make_archive(root: Path, count: int, size: int) -> Path:
    from wsipipe.slide.synthetic import SyntheticSpec, write_synthetic_slide

    archive = root / "archive"
    for index in range(count):
        target = archive / f"case{index:03d}" / "slide.tif"
        target.parent.mkdir(parents=True)
        write_synthetic_slide(target, SyntheticSpec(width=size, height=size, mpp=SLIDE_MPP, seed=index))
    return archive


def make_model(root: Path) -> Path:
    import torch

    from wsipipe.models import build_model
    from wsipipe.models.io import model_metadata, save_model

    torch.manual_seed(0)
    model = build_model("plain-unet", 2, MODEL_ARGS).eval()
    meta = model_metadata("plain-unet", MODEL_ARGS, ["background", "tumour"], MODEL_MPP, MODEL_TILE)
    return save_model(root / "bench-unet.safetensors", model, meta)


def slides_per_hour(archive: Path, root: Path, job: str, options: dict, workers: int, repeats: int) -> list[float]:
    from distributed import LocalCluster

    from wsipipe.batch import discover, job_spec, run_batch

    entries = discover(archive)
    spec = job_spec(job)
    rates = []
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster:  # fmt: skip
        run_batch(entries[:workers], root / f"warmup{workers}", spec, options, scheduler=cluster.scheduler_address)
        for repeat in range(repeats):
            start = time.perf_counter()
            records = run_batch(
                entries, root / f"out{workers}-{repeat}", spec, options, scheduler=cluster.scheduler_address
            )
            elapsed = time.perf_counter() - start
            assert all(r.state == "done" for r in records), [r.error for r in records if r.state != "done"]
            rates.append(len(entries) / elapsed * 3600)
            print(f"{workers} worker(s), run {repeat + 1}: {len(entries)} slides in {elapsed:.2f} s", flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=("segment", "info"), default="segment")
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--size", type=int, default=6000, help="side of each synthetic slide (level-0 px)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wsipipe-bench-batch-") as tmp:
        root = Path(tmp)
        archive = make_archive(root, args.slides, args.size)
        options = {"model": make_model(root), "normalize": "none", "device": "cpu"} if args.job == "segment" else {}
        one = statistics.median(slides_per_hour(archive, root, args.job, options, 1, args.repeats))
        two = statistics.median(slides_per_hour(archive, root, args.job, options, 2, args.repeats))
    speedup = two / one
    print(f"median slides/hour: 1 worker {one:.0f}, 2 workers {two:.0f}, speed-up {speedup:.2f}x (target 1.7x)")
    print(json.dumps({
        "benchmark": "batch", "job": args.job, "slides": args.slides, "slide_side_px": args.size,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
        "slides_per_hour_1_worker": round(one), "slides_per_hour_2_workers": round(two),
        "speedup_2_vs_1": round(speedup, 2), "target_speedup": 1.7, "meets_target": speedup >= 1.7,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
