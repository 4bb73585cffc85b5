"""Nuclei per second of the classical method on CPU, and the share of time in post-processing.

    PYTHONPATH=. python benchmarks/bench_nuclei.py [NUCLEI_DIR] [--repeats N]

"Post-processing" is everything after the foreground decision (distance transform, peak
seeds, watershed, small-object removal, tile merging and measurement); the rest is colour
deconvolution, smoothing and thresholding. Runs the CPM-15 images at 0.5 µm/px as one tiled
pass each (1024 px cores), repeats, and quotes medians. Ends with one line of JSON.
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


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    repeats = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 3
    root = Path(args[0] if args else os.environ.get("WSIPIPE_DATA", "../shared/data"))
    root = root if (root / "cpm15").is_dir() else root / "nuclei"
    samples = load_cpm15(root / "cpm15")
    calibrations = [calibrate(s.rgb) for s in samples]
    params = ClassicalParams()

    def threshold_only(sample, calibration):
        h = ndimage.gaussian_filter(haematoxylin_od(sample.rgb, calibration.stain_matrix), params.smooth_um / sample.mpp)
        return h > calibration.threshold * params.threshold_scale

    rates, shares = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        count = 0
        for sample, calibration in zip(samples, calibrations):
            _, nuclei = segment_image_tiled(
                sample.rgb,
                lambda rgb: classical.segment_nuclei(rgb, sample.mpp, calibration, params),
                lambda rgb: haematoxylin_od(rgb, calibration.stain_matrix),
            )
            count += len(nuclei)
        total = time.perf_counter() - start
        start = time.perf_counter()
        for sample, calibration in zip(samples, calibrations):
            threshold_only(sample, calibration)
        front = time.perf_counter() - start
        rates.append(count / total)
        shares.append(1 - front / total)
    rate, share = statistics.median(rates), statistics.median(shares)
    print(f"classical, CPU, {len(samples)} CPM-15 images, {count} nuclei: {rate:.0f} nuclei/s (median of {repeats}), "
          f"post-processing {100 * share:.0f} % of the time")
    print(json.dumps({"method": "classical", "device": "cpu", "nuclei": count, "nuclei_per_s": round(rate, 1),
                      "postprocessing_share": round(share, 3), "repeats": repeats}))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
