"""Cellularity of an image: from masks (the score the regression network learns when no
pathologist scores exist, as the shared data has none; defined as the ``nuclei`` stage reports
it) or from a trained ``cellularity`` model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def cellularity_from_masks(instances: np.ndarray, tumour: np.ndarray) -> float | None:
    """The share of ``tumour`` that nuclear pixels (``instances`` > 0) cover; None without tumour.

    As the stage's figures: at most 1, and a nucleus straddling the tumour's edge counts with its
    pixels inside only.
    """
    tumour = np.asarray(tumour, dtype=bool)
    if instances.shape != tumour.shape:
        raise ValueError(f"instances {instances.shape} and tumour mask {tumour.shape} differ in shape")
    area = int(np.count_nonzero(tumour))
    if area == 0:
        return None
    return float(np.count_nonzero((instances > 0) & tumour) / area)


def crop_grid(side: int, tile: int) -> list[int]:
    """Offsets of the fewest ``tile``-long crops covering ``side`` (evenly spread, overlapping)."""
    if side <= tile:
        return [0]
    count = -(-side // tile)
    return [round(offset) for offset in np.linspace(0, side - tile, count)]


def predict_cellularity(bundle, rgb: np.ndarray, device: str = "cpu", batch_size: int = 8) -> float:
    """A cellularity model's score of an image at the model's µm/px: the mean of its predictions on
    a grid of ``tile_size`` crops covering the image, so the network sees inputs of the size and
    scale it was trained on, and memory does not grow with the image. Images smaller than a tile
    are mirrored out to it, as training patches are."""
    import cv2
    import torch

    tile = bundle.tile_size
    pad_y, pad_x = max(0, tile - rgb.shape[0]), max(0, tile - rgb.shape[1])
    if pad_y or pad_x:
        rgb = cv2.copyMakeBorder(
            rgb, pad_y // 2, pad_y - pad_y // 2, pad_x // 2, pad_x - pad_x // 2, cv2.BORDER_REFLECT_101
        )
    crops = [
        rgb[y : y + tile, x : x + tile] for y in crop_grid(rgb.shape[0], tile) for x in crop_grid(rgb.shape[1], tile)
    ]
    model = bundle.model.to(device).eval()
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(crops), batch_size):
            x = torch.as_tensor(np.stack(crops[start : start + batch_size]), device=device)
            predictions.append(model(bundle.preprocess(x)).cpu())
    return float(torch.cat(predictions).mean())


def write_scored_crops(samples, out_dir: Path, crop: int, per_image: int) -> list[tuple[str, float]]:
    """Up to ``per_image`` ``crop``-sided crops of each ``NucleiSample`` (a grid, evenly spread) as
    PNGs in ``out_dir``, with ``scores.csv`` (image, cellularity, group: the source image, so
    cross-validation keeps one image's crops in one fold) beside them; returns its (image, score) rows.

    The score is ``cellularity_from_masks`` with the whole crop as tumour: there are no tumour
    masks for these images, so it is the nuclei area fraction of the crop, not a pathologist's score.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, groups = [], []
    for sample in samples:
        height, width = sample.instances.shape
        corners = [(y, x) for y in crop_grid(height, crop) for x in crop_grid(width, crop)]
        keep = np.linspace(0, len(corners) - 1, min(per_image, len(corners))).round().astype(int)
        for y, x in (corners[i] for i in keep):
            instances = sample.instances[y : y + crop, x : x + crop]
            name = f"{sample.name.replace('/', '_')}_y{y}_x{x}.png"
            Image.fromarray(sample.rgb[y : y + crop, x : x + crop]).save(out_dir / name)
            score = cellularity_from_masks(instances, np.ones(instances.shape, dtype=bool))
            assert score is not None  # the whole (non-empty) crop is tumour
            rows.append((name, score))
            groups.append(sample.name)
    write_scores_csv(out_dir / "scores.csv", rows, groups)
    return rows


def write_scores_csv(path: Path, rows: list[tuple[str, float]], groups: list[str] | None = None) -> None:
    """``image,cellularity`` rows (and a ``group`` column when ``groups`` are given), as training
    reads them and ``evaluate --task cellularity`` scores them."""
    import csv

    from wsipipe.files import write_atomic
    from wsipipe.nuclei.scoring import GROUP_COLUMN

    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    if groups is None:
        writer.writerows([("image", "cellularity"), *((n, f"{s:.6f}") for n, s in rows)])
    else:
        writer.writerows(
            [("image", "cellularity", GROUP_COLUMN), *((n, f"{s:.6f}", g) for (n, s), g in zip(rows, groups))]
        )
    write_atomic(path, table.getvalue())
