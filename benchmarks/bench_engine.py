"""Benchmark the inference engine: ``wsipipe segment`` end to end against the model-only ceiling,
the readers alone, and peak memory.

In one run, with one model file and one batch size:

- end-to-end: ``wsipipe segment`` as a user runs it (a subprocess), on a synthetic slide and on
  one 4x bigger (``wsipipe synth`` slides in a temporary folder); tiles/s = tiles / wall time
  of the whole command (tissue detection, reading, inference, stitching, pyramid, report);
- ceiling: the same model, the same batch size, batches already in device memory, forward pass
  only (3 passes over ``--ceiling-batches`` batches before and 3 after the end-to-end runs; median);
- peak RSS of the command's whole process tree (sampled every 50 ms);
- readers alone: the engine's slide source (``slide_batches``) over the big slide's tissue tiles
  with 1 reader process and with N (``--workers``, default ``reader_count`` of the device); with
  CUDA the GPU JPEG path too, as segment reads.

Prints the figures (medians over ``--repeats`` end-to-end runs) and ends with one JSON line.
GPU: ``--arch unet --tile 512 --batch-size 64 --device cuda`` (U-Net ResNet-34, random weights).
CPU: ``--arch unet`` (the same net at 256 px, batch 8), ``--arch bundled`` (the bundled tumour
model's architecture) and the default ``plain-unet`` (a tiny net: the worst case for the ratio).

Nuclei (``nuclei_figures``; ``--only nuclei`` runs that part alone): ``wsipipe nuclei --model
bundled`` end to end on a synthetic slide at 0.5 µm/px (``--nuclei-size``), windows/s against the
model-only ceiling over the same windows (both passes of the normalised view, eight views each),
the window readers alone with 1 and N processes, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wsipipe.inference.engine import reader_count, slide_batches, start_readers  # noqa: E402
from wsipipe.models import build_model  # noqa: E402
from wsipipe.models.io import load_model, model_metadata, save_model  # noqa: E402
from wsipipe.slide.synthetic import SyntheticSpec, write_synthetic_slide  # noqa: E402

#: --arch: (architecture, arguments). ``unet``: the issue's U-Net ResNet-34; ``bundled``: the bundled
#: tumour model's architecture (what the CPU demo runs); ``plain-unet``: a tiny net, where the
#: per-tile work around the model (reading, blending, writing) weighs most.
ARCHS = {
    "unet": ("unet", {"encoder": "resnet34"}),
    "bundled": ("unet", {"encoder": "mobilenet_v2", "decoder_channels": [128, 64, 32, 16, 8]}),
    "plain-unet": ("plain-unet", {"base": 8}),
}


def peak_tree_rss(command: list[str], env: dict) -> tuple[float, int, str]:
    """(wall seconds, peak summed RSS bytes of the process and its children, stderr)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    stderr = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"segment failed ({proc.returncode}): {stderr}")
    return elapsed, peak, stderr


def ceiling_tiles_per_s(model_path: Path, batch_size: int, device: str, batches: int, repeats: int) -> float:
    """Model-only throughput: batches already on the device, forward only (same settings as segment)."""
    import torch

    bundle = load_model(model_path, device=device)
    model = bundle.model
    cuda = device.startswith("cuda")
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    tile = bundle.tile_size
    generator = torch.Generator().manual_seed(0)
    # network inputs as the runner makes them (uint8 NHWC through ``preprocess``): NCHW with
    # channels-last strides, which the CPU's convolutions run faster than a contiguous NCHW tensor
    data = [
        bundle.preprocess(
            torch.randint(0, 256, (batch_size, tile, tile, 3), dtype=torch.uint8, generator=generator)
        ).to(device)
        for _ in range(batches)
    ]
    if cuda:
        data = [x.contiguous(memory_format=torch.channels_last) for x in data]
    rates = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
        model(data[0])  # warm-up
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for x in data:
                model(x)
            if cuda:
                torch.cuda.synchronize()
            rates.append(batches * batch_size / (time.perf_counter() - t0))
    return statistics.median(rates)


def reader_tiles_per_s(
    slide: Path, model_path: Path, overlap: int, workers: int, device: str, batch_size: int, limit: int
) -> float:
    """Tiles/s of the engine's slide source alone over the first ``limit`` tissue tiles, read
    as segment reads them (``workers`` processes; 0: in this process; the GPU path with CUDA)."""
    from wsipipe.segment import plan_tiles
    from wsipipe.slide import open_slide

    bundle = load_model(model_path)
    with open_slide(slide) as reader:
        plan = plan_tiles(reader, bundle.mpp, bundle.tile_size, overlap)
        coords = plan.coords[:limit]
        pool = start_readers(slide, None, workers)
        try:
            if pool is not None:  # started and warm: the figure is the steady rate
                list(pool.map(int, range(workers)))
            t0 = time.perf_counter()
            count = 0
            for _, tiles in slide_batches(
                coords,
                list(range(len(coords))),
                tile=bundle.tile_size,
                mpp=bundle.mpp,
                batch_size=batch_size,
                reader=reader,
                pool=pool,
                device=device,
            ):
                count += len(tiles)
            if device.startswith("cuda"):
                import torch

                torch.cuda.synchronize()
            return count / (time.perf_counter() - t0)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def nuclei_figures(tmp: Path, side: int, device: str, workers: int, env: dict) -> dict:
    """``nuclei --model bundled`` on a synthetic slide at the model's 0.5 µm/px: end-to-end
    windows/s (wall clock, start-up included), the model-only ceiling over the same windows
    (random pixels already on the device, forward only: both passes of the normalised view, each
    with the model's eight views), their ratio (post-processing included), reader-only windows/s
    with 1 and ``workers`` processes (the normalised view's mapping included, pool start-up
    included), and peak RSS."""
    import torch

    from wsipipe.inference.engine import Runner
    from wsipipe.nuclei.stage import (
        BUNDLED_NUCLEI_MODEL,
        CORE_PX,
        normalised_view,
        open_input,
        split_views,
        windows_per_batch,
    )
    from wsipipe.nuclei.tiled import DEFAULT_MARGIN_UM, plan_windows
    from wsipipe.nuclei.windows import NormalisedView

    bundle = load_model(BUNDLED_NUCLEI_MODEL, device=device)
    slide_path = write_synthetic_slide(
        tmp / "nuclei.tif", SyntheticSpec(width=side, height=side, mpp=bundle.mpp, seed=2)
    )
    out = tmp / "out-nuclei"
    command = [
        sys.executable,
        "-m",
        "wsipipe",
        "nuclei",
        str(slide_path),
        "-o",
        str(out),
        "--model",
        "bundled",
        "--device",
        device,
        "--quiet",
    ]
    wall, peak, _ = peak_tree_rss(command, env)
    summary = json.loads((out / "nuclei.json").read_text())
    windows_run = sum(1 for tile in summary["tiles"] if tile["tissue_mm2"] > 0)

    slide = open_input(slide_path, None, None, bundle.mpp)
    margin = round(DEFAULT_MARGIN_UM / bundle.mpp)
    windows = [w for _, w in plan_windows(slide.shape, CORE_PX, margin)][: max(1, windows_run)]
    views, _ = split_views(bundle.metadata.get("instances"))
    normaliser = normalised_view(bundle.metadata)
    passes = 2 if normaliser is not None else 1
    batch = windows_per_batch(device)
    runner = Runner(bundle, device, batch, outputs=lambda raw: raw, views=views, averaged=("segmentation", "distance"))
    generator = torch.Generator().manual_seed(0)
    inputs = [
        torch.randint(0, 256, (1, w[2] - w[0], w[3] - w[1], 3), generator=generator, dtype=torch.uint8).to(device)
        for w in windows
    ]
    runner(inputs[0])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for x in inputs:
        for _ in range(passes):
            runner(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    ceiling = len(inputs) / (time.perf_counter() - t0)

    prepare = NormalisedView(normaliser, None) if normaliser is not None else None
    readers = {}
    for n in sorted({1, workers}):
        t0 = time.perf_counter()
        count = sum(len(tiles) for _, tiles in slide.batches(windows, batch, prepare, readers=n))
        readers[str(n)] = count / passes / (time.perf_counter() - t0)
    end_to_end = windows_run / wall
    figures = {
        "slide_side": side,
        "windows": windows_run,
        "window_px": CORE_PX + 2 * margin,
        "views": views,
        "passes": passes,
        "wall_s": round(wall, 2),
        "end_to_end_windows_per_s": round(end_to_end, 4),
        "ceiling_windows_per_s": round(ceiling, 4),
        "ratio": round(end_to_end / ceiling, 3),
        "readers_windows_per_s": {n: round(rate, 3) for n, rate in readers.items()},
        "peak_rss_mib": round(peak / 2**20, 1),
        "nuclei": summary["nuclei_count"],
    }
    print(
        f"nuclei: {windows_run} windows of up to {figures['window_px']} px in {wall:.1f} s = {end_to_end:.4f} "
        f"windows/s end to end; model-only ceiling {ceiling:.4f} windows/s ({views} views x {passes} passes); "
        f"ratio {figures['ratio']:.2f} (target >= 0.7 on the CPU, 0.6 with CUDA); readers alone "
        + ", ".join(f"{n} process(es) {rate:.2f} windows/s" for n, rate in readers.items())
        + f"; peak RSS {figures['peak_rss_mib']:.0f} MiB",
        file=sys.stderr,
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=12288, help="small slide side (level-0 px); the big one is 2x")
    parser.add_argument("--slide-mpp", type=float, default=0.5)
    parser.add_argument("--model-mpp", type=float, default=1.0)
    parser.add_argument("--arch", default="plain-unet", choices=sorted(ARCHS))
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--workers", type=int, default=None, help="reader processes (default: reader_count of the device)"
    )
    parser.add_argument("--reader-tiles", type=int, default=512, help="tiles the readers-only figures read")
    parser.add_argument("--normalize", default="none")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--ceiling-batches", type=int, default=8)
    parser.add_argument("--nuclei-size", type=int, default=2048, help="side of the nuclei slide (0.5 µm/px)")
    parser.add_argument("--only", choices=("segment", "nuclei"), default=None, help="run one part")
    args = parser.parse_args()
    workers = reader_count(args.device) if args.workers is None else args.workers

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        tmp = Path(tmp)
        if args.only == "nuclei":
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            print(
                json.dumps(
                    {
                        "benchmark": "engine",
                        "device": args.device,
                        "workers": workers,
                        "nuclei": nuclei_figures(tmp, args.nuclei_size, args.device, workers, env),
                    }
                )
            )
            return
        model_path = tmp / "model.safetensors"
        architecture, arch_args = ARCHS[args.arch]
        net = build_model(architecture, 2, arch_args)
        save_model(
            model_path,
            net,
            model_metadata(architecture, arch_args, ["background", "tumour"], mpp=args.model_mpp, tile_size=args.tile),
        )
        slides = {}
        for name, side in (("small", args.size), ("big", 2 * args.size)):
            t0 = time.perf_counter()
            slides[name] = write_synthetic_slide(
                tmp / f"{name}.tif", SyntheticSpec(width=side, height=side, mpp=args.slide_mpp, seed=1)
            )
            print(f"synth {name}: {side} x {side} px in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        # The ceiling is measured before and after the end-to-end runs (median of both), so a
        # change in machine load during the run moves both figures alike.
        ceilings = [ceiling_tiles_per_s(model_path, args.batch_size, args.device, args.ceiling_batches, 3)]
        results = {}
        for name, slide in slides.items():
            runs = []
            for repeat in range(args.repeats):
                out = tmp / f"out-{name}-{repeat}"
                command = [
                    sys.executable,
                    "-m",
                    "wsipipe",
                    "segment",
                    str(slide),
                    "-o",
                    str(out),
                    "--model",
                    str(model_path),
                    "--normalize",
                    args.normalize,
                    "--batch-size",
                    str(args.batch_size),
                    "--device",
                    args.device,
                    "--readers",
                    str(workers),
                    "--quiet",
                ]
                wall, peak, _ = peak_tree_rss(command, env)
                report = json.loads((out / "report.json").read_text())
                runs.append((wall, peak, report))
            n_tiles = runs[0][2]["n_tiles"]
            results[name] = {
                "n_tiles": n_tiles,
                "wall_s": statistics.median(r[0] for r in runs),
                "tiles_per_s": statistics.median(n_tiles / r[0] for r in runs),
                "inference_tiles_per_s": statistics.median(r[2]["tiles_per_s"]["inference"] for r in runs),
                "peak_rss_mib": statistics.median(r[1] for r in runs) / 2**20,
                "timings_s": runs[0][2]["timings_s"],
            }
            print(
                f"{name}: {n_tiles} tiles, {results[name]['wall_s']:.1f} s, "
                f"{results[name]['tiles_per_s']:.2f} tiles/s end-to-end "
                f"({results[name]['inference_tiles_per_s']:.2f} in the inference stage), "
                f"peak RSS {results[name]['peak_rss_mib']:.0f} MiB",
                file=sys.stderr,
            )

        ceilings.append(ceiling_tiles_per_s(model_path, args.batch_size, args.device, args.ceiling_batches, 3))
        ceiling = statistics.median(ceilings)
        from wsipipe.inference.sliding import default_overlap

        readers = {
            str(n): reader_tiles_per_s(
                slides["big"],
                model_path,
                default_overlap(args.tile),
                n,
                args.device,
                args.batch_size,
                args.reader_tiles,
            )
            for n in sorted({1, workers})
        }
        print(
            "readers alone: "
            + ", ".join(f"{n} process(es) {rate:.1f} tiles/s" for n, rate in readers.items())
            + f" ({readers[str(workers)] / ceiling:.2f}x the ceiling with {workers})",
            file=sys.stderr,
        )

        # --- NUCLEI: the nuclei stage's figures (nuclei --model end to end, its model-only
        # ceiling, their ratio, post-processing included) go here, into ``nuclei`` -------------
        nuclei = nuclei_figures(tmp, args.nuclei_size, args.device, workers, env) if args.only is None else None
        ratio = results["big"]["tiles_per_s"] / ceiling
        ratio_inference = results["big"]["inference_tiles_per_s"] / ceiling
        print(
            f"model-only ceiling: {ceiling:.2f} tiles/s; end-to-end / ceiling = {ratio:.2f} "
            f"(inference stage / ceiling = {ratio_inference:.2f}; target >= 0.85 on the CPU, 0.8 with CUDA)",
            file=sys.stderr,
        )
        print(
            f"peak RSS small {results['small']['peak_rss_mib']:.0f} MiB, big (4x) "
            f"{results['big']['peak_rss_mib']:.0f} MiB (target < 2048, big not larger)",
            file=sys.stderr,
        )
        print(
            json.dumps(
                {
                    "benchmark": "engine",
                    "device": args.device,
                    "arch": args.arch,
                    "tile": args.tile,
                    "batch_size": args.batch_size,
                    "workers": workers,
                    "normalize": args.normalize,
                    "ceiling_tiles_per_s": round(ceiling, 3),
                    "ceiling_before_after": [round(c, 3) for c in ceilings],
                    "end_to_end_tiles_per_s": round(results["big"]["tiles_per_s"], 3),
                    "ratio": round(ratio, 3),
                    "inference_stage_ratio": round(ratio_inference, 3),
                    "small": results["small"],
                    "big": results["big"],
                    "readers_tiles_per_s": {n: round(rate, 3) for n, rate in readers.items()},
                    "readers_over_ceiling": round(readers[str(workers)] / ceiling, 3),
                    "peak_rss_mib": round(results["big"]["peak_rss_mib"], 1),
                    "nuclei": nuclei,
                }
            )
        )


if __name__ == "__main__":
    main()
