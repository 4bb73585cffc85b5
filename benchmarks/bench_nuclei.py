"""Nuclei per second of the classical method and of US-Net, and each one's share of time in post-processing.

    PYTHONPATH=. python benchmarks/bench_nuclei.py [NUCLEI_DIR] [--repeats N] [--model MODEL] [--device cpu|cuda]

Runs the CPM-15 images at 0.5 µm/px as one tiled pass each (1024 px cores, as ``wsipipe
nuclei``), repeats, and quotes medians. "Post-processing" is everything after the per-pixel
front: for the classical method the front is colour deconvolution, smoothing and thresholding
(timed alone), and the rest (distance transform, peak seeds, watershed, tile merging,
measurement) is post-processing; for US-Net the front is the network's forward pass (timed
inside the run; with a normalised view the colour mapping and both passes), and the rest (NMS,
seeded watershed, tile merging, measurement) is post-processing. ``--model`` defaults to the
bundled nuclei model. Ends with one line of JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from wsipipe.nuclei import classical
from wsipipe.nuclei.classical import ClassicalParams, calibrate, haematoxylin_od
from wsipipe.nuclei.data import load_cpm15
from wsipipe.nuclei.tiled import segment_image_tiled


def _option(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def bench_classical(samples, calibrations, repeats: int) -> dict:
    params = ClassicalParams()

    def threshold_only(sample, calibration):
        h = ndimage.gaussian_filter(
            haematoxylin_od(sample.rgb, calibration.stain_matrix), params.smooth_um / sample.mpp
        )
        return h > calibration.threshold * params.threshold_scale

    rates, shares = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        count = 0
        for sample, calibration in zip(samples, calibrations):
            _, nuclei = segment_image_tiled(
                sample.rgb,
                lambda rgb, sample=sample, calibration=calibration: classical.segment_nuclei(
                    rgb, sample.mpp, calibration, params
                ),
                lambda rgb, calibration=calibration: haematoxylin_od(rgb, calibration.stain_matrix),
            )
            count += len(nuclei)
        total = time.perf_counter() - start
        start = time.perf_counter()
        for sample, calibration in zip(samples, calibrations):
            threshold_only(sample, calibration)
        front = time.perf_counter() - start
        rates.append(count / total)
        shares.append(1 - front / total)
    return {
        "method": "classical",
        "device": "cpu",
        "nuclei": count,
        "nuclei_per_s": round(statistics.median(rates), 1),
        "postprocessing_share": round(statistics.median(shares), 3),
    }


def bench_usnet(samples, calibrations, model: Path, device: str, repeats: int) -> dict:
    import torch

    from wsipipe.models.io import load_model
    from wsipipe.models.usnet import usnet_instances
    from wsipipe.nuclei.stage import input_stain, split_views, usnet_forward

    bundle = load_model(model, device=device)
    views, settings = split_views(bundle.metadata.get("instances"))  # as wsipipe nuclei uses them
    usnet_forward(bundle, views)(samples[0].rgb[:256, :256])  # warm-up (oneDNN / CUDA kernels)
    rates, shares = [], []
    for _ in range(repeats):
        front = 0.0

        def segment(rgb):  # runs the current image's ``forward`` (set in the loop below)
            nonlocal front
            start = time.perf_counter()
            outputs = forward(rgb)  # noqa: B023 - the image being segmented; a normalised view doubles the work
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            front += time.perf_counter() - start
            return usnet_instances(*outputs, **settings)

        start = time.perf_counter()
        count = 0
        for sample, calibration in zip(samples, calibrations):
            forward = usnet_forward(
                bundle, views, input_stain(bundle.metadata, sample.rgb)
            )  # once per image, as per slide
            _, nuclei = segment_image_tiled(
                sample.rgb, segment, lambda rgb, c=calibration: haematoxylin_od(rgb, c.stain_matrix)
            )
            count += len(nuclei)
        total = time.perf_counter() - start
        rates.append(count / total)
        shares.append(1 - front / total)
    return {
        "method": "usnet",
        "model": model.name,
        "device": device,
        "nuclei": count,
        "nuclei_per_s": round(statistics.median(rates), 1),
        "postprocessing_share": round(statistics.median(shares), 3),
    }


def main() -> None:
    from wsipipe.nuclei.stage import BUNDLED_NUCLEI_MODEL

    args = [a for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("--") and not sys.argv[i - 1].startswith("--")]
    repeats = int(_option("--repeats", "3"))
    model = Path(_option("--model", str(BUNDLED_NUCLEI_MODEL)))
    device = _option("--device", "cpu")
    root = Path(args[0] if args else os.environ.get("WSIPIPE_DATA", "../shared/data"))
    root = root if (root / "cpm15").is_dir() else root / "nuclei"
    samples = load_cpm15(root / "cpm15")
    calibrations = [calibrate(s.rgb) for s in samples]
    torch_threads = __import__("torch").get_num_threads()
    results = [
        bench_classical(samples, calibrations, repeats),
        bench_usnet(samples, calibrations, model, device, repeats),
    ]
    for r in results:
        print(
            f"{r['method']}, {r['device']}, {len(samples)} CPM-15 images, {r['nuclei']} nuclei: "
            f"{r['nuclei_per_s']:.0f} nuclei/s (median of {repeats}), post-processing "
            f"{100 * r['postprocessing_share']:.0f} % of the time (target <= 30 % for the learned model)"
        )
    print(json.dumps({"images": len(samples), "repeats": repeats, "torch_threads": torch_threads, "results": results}))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
