"""Classical nuclei segmentation: haematoxylin OD, Otsu threshold, distance-transform watershed.

Needs no model, so it is the baseline and the fallback. The image-wide choices (the stain
matrix and the haematoxylin threshold) are made once per image or slide by ``calibrate`` and
then applied unchanged to every tile by ``segment_nuclei``, so a slide cut into tiles gives the
same nuclei as the whole image would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage.color import rgb_from_hed

#: Ruifrok & Johnston's H, E, DAB stain vectors (skimage's), for when none is estimated.
RUIFROK_HED = np.asarray(rgb_from_hed, dtype=np.float64)
#: Pixels with a total optical density below this are background (glass) when calibrating.
TISSUE_OD = 0.15


@dataclass(frozen=True)
class ClassicalParams:
    """The few knobs of the classical method, in physical units so they hold at any µm/px."""

    # defaults: the setting 5-fold cross-validation picked on CPM-15 + MoNuSeg (docs/nuclei.md)
    threshold_scale: float = 0.9  # multiplies the Otsu threshold of the haematoxylin OD
    min_distance_um: float = 2.5  # closest two nuclei centres (watershed seeds) may be
    min_area_um2: float = 8.0  # smaller objects are debris
    smooth_um: float = 0.5  # Gaussian sigma applied to the haematoxylin OD


@dataclass(frozen=True)
class Calibration:
    """Image- or slide-wide decisions shared by all tiles."""

    stain_matrix: np.ndarray = field(default_factory=lambda: RUIFROK_HED.copy())  # 3x3 rows: H, E, residual
    threshold: float = 0.0  # Otsu threshold of the haematoxylin OD over tissue

    def to_dict(self) -> dict:
        return {"stain_matrix": self.stain_matrix.tolist(), "threshold": float(self.threshold)}


def full_stain_matrix(stain_matrix) -> np.ndarray:
    """3x3 unit rows from a 2x3 (H, E) or 3x3 matrix; a missing third row is their cross product."""
    m = np.asarray(stain_matrix, dtype=np.float64)
    if m.shape == (2, 3):
        m = np.vstack([m, np.cross(m[0], m[1])])
    if m.shape != (3, 3):
        raise ValueError(f"stain matrix must be 2x3 or 3x3, got {m.shape}")
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    if np.any(norms == 0) or abs(np.linalg.det(m / norms)) < 1e-6:
        raise ValueError("stain matrix rows are zero or linearly dependent")
    return m / norms


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """-ln(I / 255) per channel (0 read as 1), float32."""
    table = -np.log(np.maximum(np.arange(256), 1) / 255.0).astype(np.float32)
    return table[np.asarray(rgb)[..., :3]]


def haematoxylin_od(rgb: np.ndarray, stain_matrix=RUIFROK_HED) -> np.ndarray:
    """Haematoxylin concentration (optical density units) of every pixel by colour deconvolution."""
    inverse = np.linalg.inv(full_stain_matrix(stain_matrix)).astype(np.float32)
    return np.maximum(optical_density(rgb) @ inverse[:, 0], 0.0)


def estimate_stain_matrix(rgb: np.ndarray) -> np.ndarray:
    """The image's own H and E vectors (Macenko) completed to 3x3; Ruifrok's if it has too little tissue."""
    from wsipipe.stain.macenko import macenko_stain_matrix

    od = optical_density(rgb).reshape(-1, 3).astype(np.float64)
    tissue = od[od.sum(axis=1) > TISSUE_OD]
    if len(tissue) < 100:
        return RUIFROK_HED.copy()
    if len(tissue) > 100_000:
        tissue = tissue[np.random.default_rng(0).choice(len(tissue), 100_000, replace=False)]
    return full_stain_matrix(macenko_stain_matrix(tissue))


def calibrate(rgb: np.ndarray, stain: str = "macenko") -> Calibration:
    """Stain matrix ('ruifrok' fixed, or 'macenko' estimated) and Otsu threshold from an image.

    For a slide pass a low-resolution view of its tissue (a thumbnail at a few µm/px).
    """
    from skimage.filters import threshold_otsu

    if stain not in ("ruifrok", "macenko"):
        raise ValueError(f"stain must be 'ruifrok' or 'macenko', got {stain!r}")
    matrix = estimate_stain_matrix(rgb) if stain == "macenko" else RUIFROK_HED.copy()
    h = haematoxylin_od(rgb, matrix)
    tissue = h[optical_density(rgb).sum(axis=-1) > TISSUE_OD]
    threshold = float(threshold_otsu(tissue)) if tissue.size and np.ptp(tissue) > 0 else float("inf")
    return Calibration(matrix, threshold)


def segment_nuclei(
    rgb: np.ndarray, mpp: float, calibration: Calibration, params: ClassicalParams = ClassicalParams()
) -> np.ndarray:
    """int32 instance labels (1..n, 0 background) of the nuclei in an RGB image at ``mpp`` µm/px."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    h = haematoxylin_od(rgb, calibration.stain_matrix)
    h = ndimage.gaussian_filter(h, params.smooth_um / mpp)
    foreground = h > calibration.threshold * params.threshold_scale
    foreground = ndimage.binary_opening(foreground, iterations=1)
    foreground = ndimage.binary_fill_holes(foreground)
    components, _ = ndimage.label(foreground)
    distance = ndimage.distance_transform_edt(foreground)
    # a little smoothing merges the twin maxima of elongated nuclei
    distance = ndimage.gaussian_filter(distance, 1.0)
    peaks = peak_local_max(
        distance,
        min_distance=max(1, int(round(params.min_distance_um / mpp))),
        labels=components,
        exclude_border=False,
    )
    markers = np.zeros(foreground.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = watershed(-distance, markers, mask=foreground).astype(np.int32)
    return drop_small(labels, params.min_area_um2 / (mpp * mpp))


def drop_small(labels: np.ndarray, min_pixels: float) -> np.ndarray:
    """Labels renumbered 1..n after removing objects with fewer than ``min_pixels`` pixels."""
    areas = np.bincount(labels.ravel())
    keep = areas >= min_pixels
    keep[0] = False
    lookup = np.zeros(areas.size, dtype=np.int32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lookup[labels]
