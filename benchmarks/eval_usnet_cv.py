"""5-fold cross-validated AJI and PQ of US-Net on CPM-15 + MoNuSeg (same folds as eval_nuclei_cv.py).

    PYTHONPATH=. python benchmarks/eval_usnet_cv.py [NUCLEI_DIR] [--steps N] [--device cuda]
        [--folds K] [--save-dir DIR]

Each fold trains a fresh US-Net on the other folds' images (seed 0) and scores the held-out
images with the same instance extraction ``wsipipe nuclei --model`` uses. ``--folds K`` runs
only the first K folds (smoke runs). ``--save-dir`` keeps each fold's model file. Needs a GPU
for useful step counts. Ends with one line of JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _option(name: str, default):
    return type(default)(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def main() -> None:
    from wsipipe.metrics.instance import aji, panoptic_quality
    from wsipipe.models.io import ModelBundle
    from wsipipe.nuclei.data import WORKING_MPP, load_nuclei_dataset
    from wsipipe.nuclei.evaluate import image_folds
    from wsipipe.nuclei.stage import usnet_segmenter
    from wsipipe.nuclei.train import nuclei_model_metadata, train_usnet

    positional = [a for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("--") and not sys.argv[i - 1].startswith("--")]
    root = Path(positional[0] if positional else os.environ.get("WSIPIPE_DATA", "../shared/data"))
    root = root if (root / "cpm15").is_dir() else root / "nuclei"
    steps, device, run_folds = _option("--steps", 2000), _option("--device", "cpu"), _option("--folds", 5)
    save_dir = Path(_option("--save-dir", "")) if "--save-dir" in sys.argv else None
    args = {"base": 32, "depth": 4, "anchor_sizes": [[24, 34], [12, 17], [6, 8.5]]}
    start = time.perf_counter()
    samples = load_nuclei_dataset(root, WORKING_MPP)
    fold_of = np.asarray(image_folds([s.name for s in samples], 5, 0))
    ajis, pqs = [], []
    for fold in range(run_folds):
        train = [s for s, f in zip(samples, fold_of) if f != fold]
        test = [s for s, f in zip(samples, fold_of) if f == fold]
        network = train_usnet(train, args, steps=steps, device=device, seed=0)
        metadata = nuclei_model_metadata(args, WORKING_MPP, 256, fold=fold, steps=steps, seed=0)
        if save_dir is not None:
            from wsipipe.models.io import save_model

            save_dir.mkdir(parents=True, exist_ok=True)
            save_model(save_dir / f"usnet-fold{fold}.safetensors", network, metadata)
        segment = usnet_segmenter(ModelBundle(network, metadata))
        fold_aji = [aji(s.instances, segment(s.rgb)) for s in test]
        fold_pq = [panoptic_quality(s.instances, segment(s.rgb)).pq for s in test]
        ajis.append(float(np.mean(fold_aji)))
        pqs.append(float(np.mean(fold_pq)))
        print(f"fold {fold}: {len(test)} images, AJI {ajis[-1]:.3f} PQ {pqs[-1]:.3f}")
    print(f"US-Net, {steps} steps, {run_folds} of 5 folds: AJI {np.mean(ajis):.3f} ± {np.std(ajis):.3f}, "
          f"PQ {np.mean(pqs):.3f} ± {np.std(pqs):.3f} ({time.perf_counter() - start:.0f} s)")
    print(json.dumps({"method": "usnet", "steps": steps, "folds_run": run_folds, "aji_mean": round(float(np.mean(ajis)), 4),
                      "aji_std": round(float(np.std(ajis)), 4), "pq_mean": round(float(np.mean(pqs)), 4),
                      "pq_std": round(float(np.std(pqs)), 4)}))


if __name__ == "__main__":
    main()
