"""Evaluation of a model on labelled images, run exactly as slide inference runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from wsipipe.inference.sliding import predict_image


def evaluate_items(
    bundle,
    items: Iterable,
    mpp_of_images: float,
    overlap: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    on_image: Callable[[str], None] | None = None,
) -> dict:
    """Metrics over a dataset (one confusion matrix accumulated over all items) plus per image or
    slide (``item.source``); predictions are compared with each mask at the mask's own resolution.

    ``items``: ``training.data.LabelledImage`` at their own µm/px, ``mpp_of_images``.
    """
    from wsipipe.errors import InvalidInputError
    from wsipipe.metrics.semantic import ConfusionMatrix

    classes = bundle.classes
    total = ConfusionMatrix(len(classes))
    by_source: dict[str, ConfusionMatrix] = {}
    for item in items:
        if item.mask.max() >= len(classes):
            raise InvalidInputError(f"{item.name}: class {item.mask.max()} but the model knows {len(classes)} classes")
        probs = predict_image(bundle, item.image, mpp_of_images, overlap, batch_size, device)
        prediction = probs.argmax(0).astype("uint8")
        if prediction.shape != item.mask.shape:  # a mask drawn at another resolution than its image
            import cv2

            prediction = cv2.resize(prediction, item.mask.shape[::-1], interpolation=cv2.INTER_NEAREST)
        cm = ConfusionMatrix(len(classes)).update(prediction, item.mask)
        total += cm
        if item.source in by_source:
            by_source[item.source] += cm
        else:
            by_source[item.source] = cm
        if on_image:
            on_image(item.name)
    per_image = {}
    for source, cm in by_source.items():
        summary = cm.summary(classes)
        per_image[source] = {k: summary[k] for k in ("miou", "accuracy", "kappa", "iou", "dice")}
    return {**total.summary(classes), "per_image": per_image}
