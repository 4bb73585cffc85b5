"""Evaluation of a model on labelled images, run exactly as slide inference runs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from wsipipe.inference.sliding import predict_image


def evaluate_pairs(
    bundle,
    pairs: list[tuple[Path, Path]],
    mpp_of_images: float,
    overlap: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    on_image: Callable[[str], None] | None = None,
) -> dict:
    """Metrics over a dataset (one confusion matrix accumulated over all images) plus per image;
    predictions are compared with each mask at the mask's own resolution."""
    from wsipipe.errors import InvalidInputError
    from wsipipe.metrics.semantic import ConfusionMatrix
    from wsipipe.training.data import read_image, read_mask

    classes = bundle.classes
    total = ConfusionMatrix(len(classes))
    per_image = {}
    for image_path, mask_path in pairs:
        image, mask = read_image(image_path), read_mask(mask_path)
        if mask.max() >= len(classes):
            raise InvalidInputError(f"{mask_path}: class {mask.max()} but the model knows {len(classes)} classes")
        probs = predict_image(bundle, image, mpp_of_images, overlap, batch_size, device)
        prediction = probs.argmax(0).astype("uint8")
        if prediction.shape != mask.shape:  # a mask drawn at another resolution than its image
            import cv2

            prediction = cv2.resize(prediction, mask.shape[::-1], interpolation=cv2.INTER_NEAREST)
        cm = ConfusionMatrix(len(classes)).update(prediction, mask)
        total += cm
        summary = cm.summary(classes)
        per_image[image_path.stem] = {k: summary[k] for k in ("miou", "accuracy", "kappa", "iou", "dice")}
        if on_image:
            on_image(image_path.stem)
    return {**total.summary(classes), "per_image": per_image}
