"""Sliding-window settings every inference shares (overlap, blending window) and ``predict_image``.

The tiles, the runner and the blender are ``wsipipe.inference.engine``'s.
"""

from __future__ import annotations

import numpy as np

from wsipipe.device import resolve_device
from wsipipe.errors import InvalidInputError

#: Beyond an image's edge: white glass, as a slide reads beyond its own edge (``wsipipe.slide``).
GLASS = 255


def default_overlap(tile: int) -> int:
    """The overlap every sliding-window inference uses unless told otherwise: a quarter tile.

    One default for ``segment``, ``evaluate``, ``predict`` and training's validation, so that a
    model's measured figures are what slide inference gives. On the lung images' cross-validation
    an eighth of a tile scored 0.004 mIoU lower (median of three sets of fold models); 120 px of
    256 changed nothing (median of eight sets 0.000) for 2.6x the tiles.
    """
    return tile // 4


def check_overlap(overlap: int, tile: int) -> None:
    """Refuse an overlap the band-wise stitcher cannot blend (half a tile or more) with one line."""
    if not 0 <= overlap < tile // 2:
        raise InvalidInputError(
            f"{{overlap}} {overlap}: must be at least 0 and less than half the tile ({tile} px)", parameter="overlap"
        )


def window_margin(overlap: int) -> int:
    """The tile-edge pixels the blending window all but ignores unless told otherwise: a quarter
    of the overlap (where a convolutional model sees the tile's padding)."""
    return overlap // 4


def cosine_window(size: int, overlap: int, margin: int | None = None, floor: float = 1e-3) -> np.ndarray:
    """1-D weights: ``margin`` pixels of (almost) zero, a raised-cosine rise, 1 in the middle.

    The rise spans ``overlap - 2 * margin`` pixels, so the windows of neighbouring tiles placed
    ``size - overlap`` apart sum to 1 across their overlap, and each tile's outer ``margin``
    pixels (default ``window_margin``) barely count. The ``floor`` keeps every pixel weighted where
    no neighbour exists (an image's or a slide's border), so normalisation never divides by zero.
    """
    margin = window_margin(overlap) if margin is None else margin
    if not 0 <= 2 * margin <= overlap <= size:
        raise ValueError(f"need 0 <= 2*margin ({margin}) <= overlap ({overlap}) <= tile size ({size})")
    weights = np.ones(size, np.float64)
    rise_len = overlap - 2 * margin
    up = np.zeros(overlap)
    if rise_len > 0:
        up[margin : margin + rise_len] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(rise_len) + 0.5) / rise_len)
    up[margin + rise_len :] = 1.0
    if overlap:
        weights[:overlap] = np.minimum(weights[:overlap], up)
        weights[size - overlap :] = np.minimum(weights[size - overlap :], up[::-1])
    return np.maximum(weights, floor).astype(np.float32)


def blend_window(tile: int, overlap: int, margin: int | None = None) -> np.ndarray:
    """The (tile, tile) weight of one tile's output: ``cosine_window`` in y times in x. The
    in-memory ``engine.Blender`` and the slide ``Stitcher`` both weight tiles with it."""
    line = cosine_window(tile, overlap, margin)
    return np.outer(line, line)


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-average when shrinking, bilinear when enlarging; (h, w, c) arrays."""
    import cv2

    if array.shape[:2] == (height, width):
        return array
    shrinking = height * width < array.shape[0] * array.shape[1]
    out = cv2.resize(array, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return out.reshape(height, width, -1)


def predict_image(
    model_bundle,
    image_rgb: np.ndarray,
    mpp_of_image: float,
    overlap: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
) -> np.ndarray:
    """Per-class probabilities (classes, H, W) for an RGB image of any size at ``mpp_of_image``.

    The image is resized to the model's µm/px, segmented tile by tile (``overlap`` defaults to a
    quarter tile; ``wsipipe.inference.engine.predict_tiled``) and the probabilities are resized
    back to the image's own pixels.
    """
    from wsipipe.inference.engine import predict_tiled

    device = str(resolve_device(device))
    tile = model_bundle.tile_size
    overlap = default_overlap(tile) if overlap is None else overlap
    check_overlap(overlap, tile)
    height, width = image_rgb.shape[:2]
    scale = mpp_of_image / model_bundle.mpp
    scaled_h, scaled_w = max(1, round(height * scale)), max(1, round(width * scale))
    scaled = _resize(np.ascontiguousarray(image_rgb[..., :3]), scaled_h, scaled_w)
    probs = predict_tiled(model_bundle, scaled, overlap, batch_size, device)
    back = _resize(np.ascontiguousarray(probs.transpose(1, 2, 0)), height, width)
    return np.ascontiguousarray(back.transpose(2, 0, 1))
