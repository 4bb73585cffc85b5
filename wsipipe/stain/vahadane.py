"""Vahadane et al. 2016: stain vectors by sparse non-negative dictionary learning on OD.

Minimises ``mean_i 0.5 |od_i - c_i S|^2 + penalty * |c_i|_1`` over concentrations ``c >= 0`` and
a 2x3 stain matrix ``S >= 0`` with rows of norm <= 1: the objective SPAMS' ``trainDL`` (mode 2,
positive atoms and codes) optimises for StainTools. Here it is solved in batch by alternating
exact steps: every pixel's 2-variable non-negative lasso in closed form, then the stain matrix
by projected block-coordinate descent on the sufficient statistics (as in Mairal et al. 2010).
Starting from Macenko's vectors, it is deterministic for a given pixel sample.
"""

from __future__ import annotations

import numpy as np
import torch

from wsipipe.stain._ops import nonneg_lasso_2
from wsipipe.stain.base import TwoStainNormalizer, order_haematoxylin_first
from wsipipe.stain.macenko import macenko_stain_matrix

#: L1 penalty on concentrations while learning the stain matrix (StainTools' ``regularizer``).
DICTIONARY_PENALTY = 0.1
MAX_ITERATIONS = 300
TOLERANCE = 1e-5
OVER_RELAXATION = 1.8


def vahadane_stain_matrix(
    od: np.ndarray, penalty: float = DICTIONARY_PENALTY, max_iterations: int = MAX_ITERATIONS
) -> np.ndarray:
    """2x3 unit stain vectors (haematoxylin first) from tissue optical densities ``(n, 3)``.

    Started from Macenko's vectors on all the given pixels (the problem is not convex: a start
    learned on fewer pixels can settle in another local minimum).
    """
    samples = torch.as_tensor(od, dtype=torch.float64)
    return order_haematoxylin_first(_learn(samples, macenko_stain_matrix(od), penalty, max_iterations))


def _learn(samples: torch.Tensor, stains: np.ndarray, penalty: float, max_iterations: int) -> np.ndarray:
    stains = stains.copy()
    for _ in range(max_iterations):
        codes = nonneg_lasso_2(samples, torch.as_tensor(stains), penalty)  # (n, 2)
        code_gram = (codes.T @ codes).numpy()  # (2, 2)
        code_od = (codes.T @ samples).numpy()  # (2, 3)
        previous = stains.copy()
        for _ in range(3):
            for j in range(2):
                if code_gram[j, j] <= 1e-12:
                    continue  # an unused stain keeps its vector
                row = np.maximum(stains[j] + (code_od[j] - code_gram[j] @ stains) / code_gram[j, j], 0)
                norm = np.linalg.norm(row)
                if norm > 1e-12:  # a row projected to zero keeps its previous vector
                    stains[j] = row / max(norm, 1.0)
        # over-relaxed step (same fixed point, fewer iterations), projected back onto the constraints
        stains = np.maximum(previous + OVER_RELAXATION * (stains - previous), 0)
        stains /= np.maximum(np.linalg.norm(stains, axis=1, keepdims=True), 1.0)
        if np.abs(stains - previous).max() < TOLERANCE:
            break
    return stains


class VahadaneNormalizer(TwoStainNormalizer):
    """Structure-preserving colour normalisation (the SCLC paper's choice)."""

    method = "vahadane"

    def stain_matrix(self, od: np.ndarray) -> np.ndarray:
        return vahadane_stain_matrix(od)
