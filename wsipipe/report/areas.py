"""Areas in mm² from pixel counts and µm/px."""

from __future__ import annotations

import numpy as np

from wsipipe.errors import InvalidInputError

UM2_PER_MM2 = 1e6


def pixel_area_mm2(mpp_x: float, mpp_y: float | None = None, downsample: float = 1.0) -> float:
    """Area of one pixel of an image ``downsample`` times coarser than level 0 (µm/px ``mpp_x``, ``mpp_y``)."""
    mpp_y = mpp_x if mpp_y is None else mpp_y
    if not (mpp_x > 0 and mpp_y > 0 and downsample > 0):
        raise InvalidInputError(f"µm/px ({mpp_x}, {mpp_y}) and downsample ({downsample}) must be positive")
    return mpp_x * downsample * mpp_y * downsample / UM2_PER_MM2


def mask_area_mm2(mask: np.ndarray, mpp_x: float, mpp_y: float | None = None, downsample: float = 1.0) -> float:
    """Area covered by the non-zero pixels of ``mask``."""
    return int(np.count_nonzero(mask)) * pixel_area_mm2(mpp_x, mpp_y, downsample)


def class_pixel_counts(labels, n_classes: int, within: np.ndarray | None = None, block: int = 2048) -> np.ndarray:
    """Pixels per class of a 2-D label array (numpy or zarr), read one ``block`` x ``block`` piece at a time.

    ``within``: a mask of the same field at any resolution (e.g. the tissue mask); pixels where it
    is zero count as class 0, so a model's blur past the tissue edge is not reported as tumour.
    """
    counts = np.zeros(n_classes, np.int64)
    height, width = labels.shape
    for y0 in range(0, height, block):
        for x0 in range(0, width, block):
            piece = np.asarray(labels[y0 : y0 + block, x0 : x0 + block])
            if within is not None:
                rows = (np.arange(y0, y0 + piece.shape[0]) + 0.5) * within.shape[0] // height
                cols = (np.arange(x0, x0 + piece.shape[1]) + 0.5) * within.shape[1] // width
                piece = np.where(within[rows.astype(int)[:, None], cols.astype(int)[None, :]] > 0, piece, 0)
            counts += [np.count_nonzero(piece == k) for k in range(n_classes)]  # bincount copies to int64
    return counts
