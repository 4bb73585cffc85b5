"""Macenko et al. 2009: stain vectors at the extreme angles of OD in its principal plane."""

from __future__ import annotations

import numpy as np

from wsipipe.stain._ops import weighted_percentile
from wsipipe.stain.base import TwoStainNormalizer, order_haematoxylin_first

#: Angles at these percentiles (of the tissue pixels' OD direction) give the two stains.
ANGULAR_PERCENTILE = 99.0


def macenko_stain_matrix(od: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """2x3 unit stain vectors (haematoxylin first) from tissue optical densities ``(n, 3)``, each
    row standing for ``counts`` pixels (default one)."""
    counts = np.ones(len(od), dtype=np.int64) if counts is None else counts
    _, eigenvectors = np.linalg.eigh(np.cov(od, rowvar=False, fweights=counts))
    plane = eigenvectors[:, [2, 1]]  # the two largest principal directions
    plane = plane * np.where(plane[0] < 0, -1.0, 1.0)  # point both into positive red OD
    projected = od @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = weighted_percentile(angles, counts, [100.0 - ANGULAR_PERCENTILE, ANGULAR_PERCENTILE])
    vectors = np.stack([plane @ np.array([np.cos(low), np.sin(low)]), plane @ np.array([np.cos(high), np.sin(high)])])
    return order_haematoxylin_first(vectors)


class MacenkoNormalizer(TwoStainNormalizer):
    """Macenko stain vectors; fast and simple, less faithful on unusual slides than Vahadane."""

    method = "macenko"

    def stain_matrix(self, od: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return macenko_stain_matrix(od, counts)
