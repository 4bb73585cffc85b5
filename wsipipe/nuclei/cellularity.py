"""Reference cellularity from masks: the score the regression network learns when no pathologist
scores exist (the shared data has none), defined as the ``nuclei`` stage reports it."""

from __future__ import annotations

import numpy as np


def cellularity_from_masks(instances: np.ndarray, tumour: np.ndarray) -> float | None:
    """Area of the nuclei whose centroid lies in ``tumour`` over the tumour area; None without tumour.

    Whole nuclei count (also their pixels outside the tumour), as in the stage's figures.
    """
    from scipy import ndimage

    tumour = np.asarray(tumour, dtype=bool)
    if instances.shape != tumour.shape:
        raise ValueError(f"instances {instances.shape} and tumour mask {tumour.shape} differ in shape")
    area = int(tumour.sum())
    if area == 0:
        return None
    ids = np.unique(instances)
    ids = ids[ids > 0]
    if ids.size == 0:
        return 0.0
    centres = np.asarray(ndimage.center_of_mass(np.ones_like(instances), instances, ids)).reshape(-1, 2)
    rows, cols = np.round(centres).astype(int).T
    malignant = ids[tumour[rows, cols]]
    sizes = np.bincount(instances.ravel())
    return float(sizes[malignant].sum() / area)
