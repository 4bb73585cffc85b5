"""Cross-validated evaluation of the classical nuclei method on the shared nuclei images.

The classical method has a few knobs (stain matrix source, threshold scale, seed spacing). Each
fold picks the setting with the best mean AJI on the other folds' images and is scored on its
own; folds group whole images, so no image is in both the tuning and the scoring set.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from wsipipe.metrics.instance import aji, panoptic_quality
from wsipipe.nuclei.classical import ClassicalParams, calibrate, segment_nuclei
from wsipipe.nuclei.data import NucleiSample

DEFAULT_GRID = {
    "stain": ["ruifrok", "macenko"],
    "threshold_scale": [0.7, 0.8, 0.9, 1.0],
    "min_distance_um": [2.5, 3.5],
}


@dataclass(frozen=True)
class FoldResult:
    fold: int
    images: list[str]
    setting: dict
    aji: float  # mean over the fold's images
    pq: float


def image_folds(names: list[str], folds: int = 5, seed: int = 0) -> list[int]:
    """Fold index of each image: a seeded shuffle dealt round-robin, so fold sizes differ by <= 1."""
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = np.empty(len(names), dtype=int)
    fold_of[order] = np.arange(len(names)) % folds
    return fold_of.tolist()


def score_grid(samples: list[NucleiSample], grid: dict = DEFAULT_GRID, progress=None):
    """settings, and AJI and PQ arrays (settings x images) of every setting on every image."""
    settings = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    aji_table = np.zeros((len(settings), len(samples)))
    pq_table = np.zeros_like(aji_table)
    for j, sample in enumerate(samples):
        calibrations = {stain: calibrate(sample.rgb, stain) for stain in grid["stain"]}
        for i, setting in enumerate(settings):
            params = ClassicalParams(
                threshold_scale=setting["threshold_scale"], min_distance_um=setting["min_distance_um"]
            )
            labels = segment_nuclei(sample.rgb, sample.mpp, calibrations[setting["stain"]], params)
            aji_table[i, j] = aji(sample.instances, labels)
            pq_table[i, j] = panoptic_quality(sample.instances, labels).pq
        if progress:
            progress()
    return settings, aji_table, pq_table


def cross_validate(samples: list[NucleiSample], folds: int = 5, seed: int = 0, grid: dict = DEFAULT_GRID):
    """Per-fold results; tuning on the training folds only (by mean AJI)."""
    settings, aji_table, pq_table = score_grid(samples, grid)
    fold_of = np.asarray(image_folds([s.name for s in samples], folds, seed))
    results = []
    for fold in range(folds):
        held_out = fold_of == fold
        best = int(np.argmax(aji_table[:, ~held_out].mean(axis=1)))
        results.append(
            FoldResult(
                fold,
                [s.name for s, h in zip(samples, held_out) if h],
                settings[best],
                float(aji_table[best, held_out].mean()),
                float(pq_table[best, held_out].mean()),
            )
        )
    return results
