"""5-fold cross-validated AJI and PQ of the classical nuclei method on CPM-15 + MoNuSeg.

    PYTHONPATH=. python benchmarks/eval_nuclei_cv.py [NUCLEI_DIR]

Prints each fold (its tuned setting and scores), the mean and standard deviation over folds,
and one line of JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from wsipipe.nuclei.data import WORKING_MPP, load_nuclei_dataset
from wsipipe.nuclei.evaluate import cross_validate


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("WSIPIPE_DATA", "../shared/data"))
    root = root if (root / "cpm15").is_dir() else root / "nuclei"
    start = time.perf_counter()
    samples = load_nuclei_dataset(root, WORKING_MPP)
    results = cross_validate(samples, folds=5, seed=0)
    for r in results:
        print(f"fold {r.fold}: {len(r.images)} images, tuned {r.setting}: AJI {r.aji:.3f} PQ {r.pq:.3f}")
    ajis = np.array([r.aji for r in results])
    pqs = np.array([r.pq for r in results])
    print(
        f"classical, {len(samples)} images at {WORKING_MPP} µm/px, 5-fold: "
        f"AJI {ajis.mean():.3f} ± {ajis.std():.3f}, PQ {pqs.mean():.3f} ± {pqs.std():.3f} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    print(
        json.dumps(
            {
                "method": "classical",
                "images": len(samples),
                "folds": 5,
                "aji_mean": round(float(ajis.mean()), 4),
                "aji_std": round(float(ajis.std()), 4),
                "pq_mean": round(float(pqs.mean()), 4),
                "pq_std": round(float(pqs.std()), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
