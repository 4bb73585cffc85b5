"""Scores of nuclei predictions against ground truth, for ``wsipipe evaluate --task instances|cellularity``.

Instances: a prediction is a ``wsipipe nuclei`` (or ``segment --nuclei``) output folder, its
``labels.zarr``, or an instance label image; the truth is an instance label image (0 =
background) or an annotation file with one outline per nucleus (Aperio, ASAP or GeoJSON, level-0
pixels). Scores are taken on the prediction's pixel grid, as ``benchmarks/eval_nuclei_cv.py``
takes them: a truth label map is resized onto it (nearest), outlines are rasterised at level 0
and resized likewise. Folders of predictions and truths give per-image scores, their mean, and
VOC AP pooled over the images.

Cellularity: two CSV files of per-case scores, compared by PK (``wsipipe.metrics.pk``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsipipe.errors import InvalidInputError
from wsipipe.metrics.instance import MATCH_IOU, aji, average_precision, detection_scores, dice, panoptic_quality

LABEL_SUFFIXES = {".png", ".tif", ".tiff"}
ANNOTATION_SUFFIXES = {".xml", ".geojson", ".json"}
#: The per-image figures, in the order they are printed.
INSTANCE_FIGURES = ("aji", "dice", "pq", "dq", "sq", "precision", "recall", "f1")


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray  # int instance labels, 0 background
    level0_shape: tuple[int, int]  # (H, W) of the input the labels were made from, in level-0 pixels
    scores: dict[int, float] | None  # confidence per id, when a score column was asked for


def read_label_image(path: Path) -> np.ndarray:
    """A single-channel instance label image (8/16/32-bit PNG or TIFF) as int64."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            labels = np.asarray(image)
    except Exception as exc:
        raise InvalidInputError(f"{path}: not a readable image ({exc})") from None
    if labels.ndim != 2:
        raise InvalidInputError(f"{path}: a {labels.shape[-1]}-channel image, not an instance label map")
    return labels.astype(np.int64)


def read_prediction(path: Path, score_column: str | None = None) -> Prediction:
    """A nuclei output folder, a labels.zarr or a label image; scores from nuclei.csv's ``score_column``."""
    from wsipipe.nuclei.outputs import read_labels

    path = Path(path)
    if path.is_dir() and (path / "labels.zarr").is_dir():
        store, table = path / "labels.zarr", path / "nuclei.csv"
    elif path.is_dir() and path.suffix == ".zarr":
        store, table = path, path.parent / "nuclei.csv"
    elif path.is_file() and path.suffix.lower() in LABEL_SUFFIXES:
        if score_column is not None:
            raise InvalidInputError(
                f"{{score_column}}: {path} is a label image; scores come from a nuclei output's nuclei.csv",
                parameter="score_column",
            )
        labels = read_label_image(path)
        return Prediction(labels, labels.shape, None)
    else:
        raise InvalidInputError(f"{path}: not a nuclei output folder, labels.zarr or instance label image")
    array, attributes = read_labels(store)
    scores = _read_scores(table, score_column) if score_column is not None else None
    labels = np.asarray(array[:]).astype(np.int64)
    # outputs written before level0_shape was recorded: the working grid times its scale
    level0 = attributes.get("level0_shape") or [round(side * attributes["level0_px_per_px"]) for side in labels.shape]
    return Prediction(labels, tuple(level0), scores)


def _read_scores(table: Path, column: str) -> dict[int, float]:
    if not table.is_file():
        raise InvalidInputError(f"{{score_column}} {column}: {table} does not exist", parameter="score_column")
    with open(table, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if column not in (reader.fieldnames or []):
            raise InvalidInputError(
                f"{{score_column}} {column}: {table} has columns {', '.join(reader.fieldnames or [])}",
                parameter="score_column",
            )
        return {int(row["id"]): float(row[column]) for row in reader}


def read_truth(path: Path, prediction: Prediction) -> np.ndarray:
    """Ground truth on the prediction's grid: a label image resized, or outlines rasterised and resized."""
    from wsipipe.nuclei.data import quiet_logger, rasterise_instances, resize_labels

    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file")
    shape = prediction.labels.shape
    if path.suffix.lower() in LABEL_SUFFIXES:
        return resize_labels(read_label_image(path), shape)
    if path.suffix.lower() not in ANNOTATION_SUFFIXES:
        raise InvalidInputError(
            f"{path}: ground truth must be a label image ({', '.join(sorted(LABEL_SUFFIXES))}) "
            f"or an annotation file ({', '.join(sorted(ANNOTATION_SUFFIXES))})"
        )
    from wsipipe.annotations import read_annotations

    with quiet_logger("wsipipe.annotations"):  # hand-drawn nuclei outlines often self-intersect
        annotations = read_annotations(path)
    return resize_labels(rasterise_instances([a.geometry for a in annotations], prediction.level0_shape), shape)


def instance_pairs(predictions: Path, truths: Path) -> list[tuple[str, Path, Path]]:
    """(name, prediction, truth): one pair, or every truth file of a folder with its prediction.

    In a folder, the prediction of truth ``NAME[_suffix].ext`` is the entry (output folder or label
    image) of the predictions folder named ``NAME``: ``image01`` goes with ``image01_inst.png``.
    """
    predictions, truths = Path(predictions), Path(truths)
    if not truths.is_dir() or truths.suffix == ".zarr":  # read_truth says what a truth may be
        return [(truths.stem, predictions, truths)]
    if not predictions.is_dir():
        raise InvalidInputError(f"{truths} is a folder, so {predictions} must be a folder of predictions")
    suffixes = LABEL_SUFFIXES | ANNOTATION_SUFFIXES
    entries = {(p.name if p.is_dir() else p.stem): p for p in predictions.iterdir() if not p.name.startswith(".")}
    pairs, missing = [], []
    for truth in sorted(p for p in truths.iterdir() if p.is_file() and p.suffix.lower() in suffixes):
        names = [n for n in entries if truth.stem == n or truth.stem.startswith(n + "_")]
        if names:
            name = max(names, key=len)
            pairs.append((name, entries[name], truth))
        else:
            missing.append(truth.name)
    if missing:
        raise InvalidInputError(
            f"{predictions}: no prediction for {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    if not pairs:
        raise InvalidInputError(f"{truths}: no label images or annotation files")
    return pairs


def score_instances(pairs: list[tuple[str, Path, Path]], score_column: str | None = None, on_image=None) -> dict:
    """Per-image Dice, AJI, PQ/DQ/SQ and detection P/R/F1 at IoU > 0.5, their means, and pooled VOC AP.

    Without ``score_column`` every prediction has the same confidence, so AP is precision x recall.
    """
    per_image, truths, preds, scores = {}, [], [], []
    for name, prediction_path, truth_path in pairs:
        prediction = read_prediction(prediction_path, score_column)
        truth = read_truth(truth_path, prediction)
        pq = panoptic_quality(truth, prediction.labels)
        det = detection_scores(truth, prediction.labels)
        per_image[name] = {
            "aji": aji(truth, prediction.labels), "dice": dice(truth, prediction.labels),
            "pq": pq.pq, "dq": pq.dq, "sq": pq.sq, "precision": det.precision, "recall": det.recall, "f1": det.f1,
            "tp": det.tp, "fp": det.fp, "fn": det.fn, "shape": list(prediction.labels.shape),
        }  # fmt: skip
        ids = np.unique(prediction.labels)
        ids = ids[ids > 0]
        truths.append(truth)
        preds.append(prediction.labels)
        scores.append(prediction.scores if prediction.scores is not None else dict.fromkeys(ids.tolist(), 1.0))
        if on_image:
            on_image(name)
    mean = {k: float(np.mean([row[k] for row in per_image.values()])) for k in INSTANCE_FIGURES}
    return {
        "task": "instances",
        "match_iou": MATCH_IOU,
        "n_images": len(per_image),
        "mean": mean,
        "ap": average_precision(truths, preds, scores),
        "ap_scores": score_column,
        "per_image": per_image,
    }


def _read_table(path: Path) -> tuple[list[str], list[dict]]:
    if not Path(path).is_file():
        raise InvalidInputError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    if not reader.fieldnames or len(reader.fieldnames) < 2:
        raise InvalidInputError(f"{path}: a CSV with a header and at least two columns is needed")
    return list(reader.fieldnames), rows


#: The optional column of a scores CSV naming where each image comes from (its slide, its source
#: image): cross-validation keeps a group's images in one fold.
GROUP_COLUMN = "group"


def value_column(header: list[str]) -> str:
    """``cellularity`` when there is such a column (a batch summary.csv), else the last column
    that is not ``group``."""
    if "cellularity" in header:
        return "cellularity"
    others = [c for c in header if c != GROUP_COLUMN]
    return others[-1] if others else header[-1]


def score_cellularity(prediction_csv: Path, truth_csv: Path) -> dict:
    """PK of predicted against reference cellularity, cases matched by the columns both files share.

    The value column of each file is ``cellularity`` if it has one, else its last column; every
    other column the two files share identifies a case (``slide,rid`` for BreastPathQ, ``key`` for
    a batch summary.csv). Every reference case needs a number in the prediction.
    """
    from wsipipe.metrics.pk import prediction_probability

    p_header, p_rows = _read_table(prediction_csv)
    t_header, t_rows = _read_table(truth_csv)
    p_value, t_value = value_column(p_header), value_column(t_header)
    keys = [c for c in t_header if c in p_header and c not in (p_value, t_value)]
    if not keys:
        raise InvalidInputError(f"{prediction_csv} and {truth_csv} share no column to match cases by")
    truth = _values(truth_csv, t_rows, keys, t_value, None)
    predicted = _values(prediction_csv, p_rows, keys, p_value, truth)
    missing = [k for k in truth if k not in predicted]
    if missing:
        raise InvalidInputError(
            f"{prediction_csv}: no {p_value} for {', '.join('/'.join(m) for m in missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    cases = list(truth)
    try:
        pk = prediction_probability([truth[c] for c in cases], [predicted[c] for c in cases])
    except ValueError as exc:
        raise InvalidInputError(f"{truth_csv}: {exc}") from None
    return {"task": "cellularity", "pk": pk, "n_cases": len(cases), "key_columns": keys,
            "value_columns": {"prediction": p_value, "truth": t_value}}  # fmt: skip


def _values(path: Path, rows: list[dict], keys: list[str], column: str, wanted: dict | None) -> dict:
    """Case -> number; with ``wanted`` only its cases are read (a prediction may hold more)."""
    values = {}
    for row in rows:
        case = tuple(row[k] for k in keys)
        if wanted is not None and case not in wanted:
            continue
        if case in values:
            raise InvalidInputError(f"{path}: case {'/'.join(case)} appears twice")
        try:
            value = float(row[column])
        except (TypeError, ValueError):
            raise InvalidInputError(f"{path}: {column} of {'/'.join(case)} is {row[column]!r}, not a number") from None
        if not math.isfinite(value):
            raise InvalidInputError(f"{path}: {column} of {'/'.join(case)} is not finite")
        values[case] = value
    return values
