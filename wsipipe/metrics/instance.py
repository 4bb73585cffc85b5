"""Instance segmentation and detection metrics on label maps (0 = background, k > 0 = one object).

* ``dice``: pixel-level binary Dice of the foreground (object pixels, whatever their id).
* ``aji``: Aggregated Jaccard Index, Kumar et al. 2017 (IEEE TMI), their Algorithm 1: every true
  object takes the predicted object of highest IoU with it (a prediction may be taken by several),
  intersections and unions are summed, and predictions never taken add their area to the union.
* ``panoptic_quality``: PQ = DQ x SQ, Kirillov et al. 2019, matching at IoU > 0.5 (which makes the
  matching unique): DQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU of the matched pairs.
* ``detection_scores``: precision, recall and F1 of the same IoU > 0.5 matching.
* ``average_precision``: PASCAL VOC all-point interpolated AP, predictions ranked by score and
  matched greedily (highest score first) to the unmatched true object of highest IoU > 0.5.
  Predictions with equal scores form one point of the curve, so unscored predictions (all tied)
  give precision x recall.

Two empty maps agree perfectly: every score is 1.0 then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Objects overlap enough to be the same object above this IoU (unique matching, PQ and VOC).
MATCH_IOU = 0.5


@dataclass(frozen=True)
class Overlaps:
    """Pairwise overlap of the objects of two label maps (ids renumbered 1..n in ``*_ids`` order)."""

    true_ids: np.ndarray  # (n_true,) original ids
    pred_ids: np.ndarray  # (n_pred,)
    true_area: np.ndarray  # (n_true,) pixels
    pred_area: np.ndarray  # (n_pred,)
    intersection: np.ndarray  # (n_true, n_pred) pixels

    @property
    def union(self) -> np.ndarray:
        return self.true_area[:, None] + self.pred_area[None, :] - self.intersection

    @property
    def iou(self) -> np.ndarray:
        union = self.union
        return np.divide(self.intersection, union, out=np.zeros(union.shape), where=union > 0)


def overlaps(true: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Areas and pairwise intersections of the objects of two same-shape label maps."""
    true = np.asarray(true)
    pred = np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"label maps differ in shape: {true.shape} vs {pred.shape}")
    true_ids, true_index = _ids_and_index(true)
    pred_ids, pred_index = _ids_and_index(pred)
    # drop background (id 0, always first when present) so objects are rows/columns 0..n-1
    true_shift = 1 if true_ids.size and true_ids[0] == 0 else 0
    pred_shift = 1 if pred_ids.size and pred_ids[0] == 0 else 0
    n_true = true_ids.size
    n_pred = pred_ids.size
    joint = np.bincount(true_index * n_pred + pred_index, minlength=n_true * n_pred).reshape(n_true, n_pred)
    true_area = joint.sum(axis=1)[true_shift:]
    pred_area = joint.sum(axis=0)[pred_shift:]
    return Overlaps(
        true_ids[true_shift:],
        pred_ids[pred_shift:],
        true_area.astype(np.int64),
        pred_area.astype(np.int64),
        joint[true_shift:, pred_shift:].astype(np.int64),
    )


def _ids_and_index(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(labels, return_inverse=True)`` (flattened): by a count over the id range when
    the ids are small non-negative integers (label maps), which is linear instead of a sort."""
    flat = labels.ravel()
    if flat.size and np.issubdtype(flat.dtype, np.integer) and flat.min() >= 0 and flat.max() <= 4 * flat.size:
        ids = np.flatnonzero(np.bincount(flat))
        lookup = np.zeros(int(ids[-1]) + 1, dtype=np.int64)
        lookup[ids] = np.arange(ids.size)
        return ids.astype(flat.dtype), lookup[flat]
    ids, index = np.unique(flat, return_inverse=True)
    return ids, index.ravel()


def dice(true: np.ndarray, pred: np.ndarray) -> float:
    """Pixel-level Dice 2|T∩P| / (|T| + |P|) of the foregrounds (label > 0)."""
    t = np.asarray(true) > 0
    p = np.asarray(pred) > 0
    total = int(t.sum()) + int(p.sum())
    return 1.0 if total == 0 else 2.0 * int((t & p).sum()) / total


def aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017, Algorithm 1)."""
    ov = overlaps(true, pred)
    if ov.true_area.size == 0 and ov.pred_area.size == 0:
        return 1.0
    intersection_sum = 0
    union_sum = 0
    used = np.zeros(ov.pred_area.size, dtype=bool)
    if ov.pred_area.size:
        iou = ov.iou
        union = ov.union
        best = np.argmax(iou, axis=1)
        for t, p in enumerate(best):
            if iou[t, p] > 0:
                intersection_sum += ov.intersection[t, p]
                union_sum += union[t, p]
                used[p] = True
            else:  # no prediction touches it: all of it is missed
                union_sum += ov.true_area[t]
    else:
        union_sum += int(ov.true_area.sum())
    union_sum += int(ov.pred_area[~used].sum())
    return float(intersection_sum / union_sum)


@dataclass(frozen=True)
class Matching:
    """True/predicted objects paired at IoU > ``MATCH_IOU`` (indices into ``Overlaps``)."""

    true_index: np.ndarray
    pred_index: np.ndarray
    iou: np.ndarray
    n_true: int
    n_pred: int

    @property
    def tp(self) -> int:
        return int(self.iou.size)

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_true - self.tp


def match(true: np.ndarray, pred: np.ndarray, threshold: float = MATCH_IOU) -> Matching:
    """Unique pairs with IoU > threshold; for threshold >= 0.5 no object can be in two pairs."""
    if threshold < MATCH_IOU:
        raise ValueError(f"matching at IoU > {threshold} is not unique; use a threshold >= 0.5")
    ov = overlaps(true, pred)
    iou = ov.iou
    t, p = np.nonzero(iou > threshold)
    return Matching(t, p, iou[t, p], ov.true_area.size, ov.pred_area.size)


@dataclass(frozen=True)
class PanopticQuality:
    pq: float
    dq: float
    sq: float
    tp: int
    fp: int
    fn: int


def panoptic_quality(true: np.ndarray, pred: np.ndarray) -> PanopticQuality:
    """PQ, DQ and SQ (Kirillov et al. 2019) of one class of objects, matched at IoU > 0.5."""
    m = match(true, pred)
    if m.n_true == 0 and m.n_pred == 0:
        return PanopticQuality(1.0, 1.0, 1.0, 0, 0, 0)
    dq = m.tp / (m.tp + 0.5 * m.fp + 0.5 * m.fn)
    sq = float(m.iou.mean()) if m.tp else 0.0
    return PanopticQuality(dq * sq, dq, sq, m.tp, m.fp, m.fn)


@dataclass(frozen=True)
class DetectionScores:
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int


def detection_scores(true: np.ndarray, pred: np.ndarray) -> DetectionScores:
    """Object-level precision, recall and F1, a detection being a prediction matched at IoU > 0.5."""
    m = match(true, pred)
    precision = m.tp / m.n_pred if m.n_pred else (1.0 if m.n_true == 0 else 0.0)
    recall = m.tp / m.n_true if m.n_true else (1.0 if m.n_pred == 0 else 0.0)
    f1 = 2 * m.tp / (m.n_true + m.n_pred) if (m.n_true + m.n_pred) else 1.0
    return DetectionScores(precision, recall, f1, m.tp, m.fp, m.fn)


def average_precision(
    true: np.ndarray | Sequence[np.ndarray],
    pred: np.ndarray | Sequence[np.ndarray],
    scores: Mapping[int, float] | Sequence[Mapping[int, float]],
    threshold: float = MATCH_IOU,
) -> float:
    """VOC all-point interpolated AP over one image or pooled over several.

    ``scores`` maps each predicted object id to its confidence (one mapping per image); every
    predicted object must have a score. Ranked by score, a prediction is a true positive when its
    best-IoU still unmatched true object overlaps it by IoU > ``threshold``, else a false positive.
    """
    images: list[tuple[Any, Any, Any]] = (
        [(true, pred, scores)] if isinstance(true, np.ndarray) else list(zip(true, pred, scores, strict=True))
    )
    ranked = []  # (score, image, pred index)
    candidates = []  # per image: IoU matrix
    n_true = 0
    for image, (t, p, s) in enumerate(images):
        ov = overlaps(t, p)
        candidates.append(ov.iou)
        n_true += ov.true_area.size
        missing = [int(i) for i in ov.pred_ids if int(i) not in s]
        if missing:
            raise ValueError(f"image {image}: no score for predicted objects {missing[:5]}")
        ranked += [(float(s[int(i)]), image, k) for k, i in enumerate(ov.pred_ids)]
    if n_true == 0:
        return 1.0 if not ranked else 0.0
    ranked.sort(key=lambda r: -r[0])  # stable: ties keep image/id order
    taken = [np.zeros(iou.shape[0], dtype=bool) for iou in candidates]
    hits = np.zeros(len(ranked), dtype=bool)
    for rank, (_, image, k) in enumerate(ranked):
        column = np.where(taken[image], -1.0, candidates[image][:, k])
        if column.size and column.max() > threshold:
            taken[image][int(np.argmax(column))] = True
            hits[rank] = True
    tp = np.cumsum(hits)
    recall = tp / n_true
    precision = tp / np.arange(1, len(ranked) + 1)
    # predictions with equal scores enter the curve together: only the end of each tie is a point
    ordered = np.asarray([r[0] for r in ranked])
    ends = np.append(ordered[1:] != ordered[:-1], True)
    return voc_all_point_ap(recall[ends], precision[ends])


def voc_all_point_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (max precision at any recall >= r), VOC 2010+."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))
