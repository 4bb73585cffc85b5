"""Semantic-segmentation metrics from a confusion matrix accumulated over a whole dataset.

IoU_i = TP_i / (TP_i + FP_i + FN_i) and Dice_i = 2 TP_i / (2 TP_i + FP_i + FN_i) (the SCLC
paper's eqs. 4-5); mIoU is their mean over classes that occur in the truth or the prediction.
Accumulating counts (not averaging per-image scores) weights every pixel equally.
"""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Counts[t, p] = pixels of true class t predicted as p; ``update`` adds one image."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: np.ndarray, truth: np.ndarray, ignore_index: int | None = None) -> ConfusionMatrix:
        prediction = np.asarray(prediction).ravel().astype(np.int64)
        truth = np.asarray(truth).ravel().astype(np.int64)
        if prediction.shape != truth.shape:
            raise ValueError(f"prediction has {prediction.size} pixels, truth {truth.size}")
        keep = truth != ignore_index if ignore_index is not None else slice(None)
        prediction, truth = prediction[keep], truth[keep]
        n = self.num_classes
        if truth.size and (truth.min() < 0 or truth.max() >= n or prediction.min() < 0 or prediction.max() >= n):
            raise ValueError(f"class index outside 0..{n - 1}")
        self.counts += np.bincount(truth * n + prediction, minlength=n * n).reshape(n, n)
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self.counts += other.counts
        return self

    def summary(self, class_names: list[str] | None = None) -> dict:
        return summarise(self.counts, class_names)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def iou_per_class(counts: np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per class; NaN for a class absent from truth and prediction."""
    tp = np.diag(counts).astype(float)
    return _safe_ratio(tp, counts.sum(0) + counts.sum(1) - tp)


def dice_per_class(counts: np.ndarray) -> np.ndarray:
    """2 TP / (2 TP + FP + FN) per class; NaN for a class absent from truth and prediction."""
    tp = np.diag(counts).astype(float)
    return _safe_ratio(2 * tp, counts.sum(0) + counts.sum(1))


def mean_iou(counts: np.ndarray) -> float:
    iou = iou_per_class(counts)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(counts: np.ndarray) -> float:
    total = counts.sum()
    return float(np.trace(counts) / total) if total else float("nan")


def cohen_kappa(counts: np.ndarray) -> float:
    """(p_o - p_e) / (1 - p_e), p_e from the truth and prediction marginals; 1.0 if p_e is 1."""
    total = counts.sum()
    if not total:
        return float("nan")
    observed = np.trace(counts) / total
    expected = float((counts.sum(0) * counts.sum(1)).sum()) / total**2
    return 1.0 if expected == 1 else float((observed - expected) / (1 - expected))


def _json_float(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def summarise(counts: np.ndarray, class_names: list[str] | None = None) -> dict:
    """All figures as JSON-ready values (NaN becomes null)."""
    names = class_names or [str(i) for i in range(len(counts))]
    return {
        "miou": _json_float(mean_iou(counts)),
        "accuracy": _json_float(pixel_accuracy(counts)),
        "kappa": _json_float(cohen_kappa(counts)),
        "iou": {n: _json_float(v) for n, v in zip(names, iou_per_class(counts))},
        "dice": {n: _json_float(v) for n, v in zip(names, dice_per_class(counts))},
        "confusion": counts.tolist(),
    }
