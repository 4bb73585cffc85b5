"""Prediction probability PK (Smith, Dutton & Smith 1996), the BreastPathQ cellularity metric.

Over every pair of cases whose reference values differ, a pair is concordant when the
prediction orders it the same way, discordant when the opposite way, and tied (``tx``) when the
predictions are equal. Pairs tied in the reference carry no information and are left out:

    PK = (concordant + tx / 2) / (concordant + discordant + tx)

PK is 1 for a perfect ranking, 0.5 for chance (or a constant prediction) and 0 for a reversed one.
"""

from __future__ import annotations

import numpy as np


def prediction_probability(reference, prediction) -> float:
    """PK of ``prediction`` against ``reference`` (equal-length 1-D sequences of numbers)."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    pred = np.asarray(prediction, dtype=np.float64).ravel()
    if ref.shape != pred.shape:
        raise ValueError(f"reference has {ref.size} values, prediction {pred.size}")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(pred))):
        raise ValueError("PK needs finite values")
    upper = np.triu_indices(ref.size, k=1)
    ref_order = np.sign(ref[:, None] - ref[None, :])[upper]
    pred_order = np.sign(pred[:, None] - pred[None, :])[upper]
    informative = ref_order != 0
    ref_order = ref_order[informative]
    pred_order = pred_order[informative]
    if ref_order.size == 0:
        raise ValueError("PK is undefined when every reference value is the same")
    concordant = int(np.sum(ref_order == pred_order))
    discordant = int(np.sum(ref_order == -pred_order))
    tied = int(np.sum(pred_order == 0))
    return (concordant + 0.5 * tied) / (concordant + discordant + tied)
