"""Instance metrics on hand-made label maps (arithmetic in the comments) and on real CPM-15 maps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsipipe.metrics.instance import (
    aji,
    average_precision,
    detection_scores,
    dice,
    overlaps,
    panoptic_quality,
    voc_all_point_ap,
)

# true objects: 1 (4 px), 2 (4 px), 3 (1 px)
TRUE = np.array(
    [
        [1, 1, 0, 0, 2, 2],
        [1, 1, 0, 0, 2, 2],
        [0, 0, 0, 0, 0, 0],
        [3, 0, 0, 0, 0, 0],
    ]
)
# predicted objects: 1 (5 px, covers all of true 1), 2 (1 px inside true 2), 4 (1 px, touches nothing)
PRED = np.array(
    [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 2, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 4],
    ]
)


def test_dice_of_foregrounds():
    # |T| = 9, |P| = 7, |T ∩ P| = 4 + 1 = 5 -> 2 * 5 / 16
    assert dice(TRUE, PRED) == pytest.approx(10 / 16)


def test_aji_by_hand():
    # T1 -> P1: I 4, U 5;  T2 -> P2 (IoU 1/4): I 1, U 4;  T3 touches nothing: U += 1;
    # P4 never taken: U += 1.  AJI = (4 + 1) / (5 + 4 + 1 + 1) = 5 / 11
    assert aji(TRUE, PRED) == pytest.approx(5 / 11)


def test_aji_counts_a_prediction_taken_twice_twice():
    # Kumar's Algorithm 1: both true objects take the one prediction: I 2 + 2, U 4 + 4 -> 0.5
    true = np.array([[1, 1, 2, 2]])
    pred = np.array([[5, 5, 5, 5]])
    assert aji(true, pred) == pytest.approx(0.5)


def test_panoptic_quality_by_hand():
    # only (T1, P1) has IoU > 0.5 (0.8): TP 1, FP 2 (P2, P4), FN 2 (T2, T3)
    # DQ = 1 / (1 + 2/2 + 2/2) = 1/3, SQ = 0.8, PQ = 0.8 / 3
    pq = panoptic_quality(TRUE, PRED)
    assert (pq.tp, pq.fp, pq.fn) == (1, 2, 2)
    assert pq.dq == pytest.approx(1 / 3)
    assert pq.sq == pytest.approx(0.8)
    assert pq.pq == pytest.approx(0.8 / 3)


def test_iou_of_exactly_half_is_not_a_match():
    # IoU 2/4 = 0.5 is not > 0.5
    true = np.array([[1, 1, 0, 0]])
    pred = np.array([[0, 7, 7, 0]])
    assert panoptic_quality(true, pred).tp == 0
    assert panoptic_quality(true, np.array([[1, 1, 1, 0]])).tp == 1  # IoU 2/3


def test_detection_scores_by_hand():
    # TP 1 of 3 predictions and 3 true objects: P = R = 1/3, F1 = 2 * 1 / (3 + 3) = 1/3
    det = detection_scores(TRUE, PRED)
    assert (det.precision, det.recall, det.f1) == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_empty_maps_agree_and_one_empty_map_scores_zero():
    empty = np.zeros((3, 3), dtype=int)
    assert aji(empty, empty) == dice(empty, empty) == panoptic_quality(empty, empty).pq == 1.0
    assert aji(TRUE, np.zeros_like(TRUE)) == 0.0
    assert panoptic_quality(np.zeros_like(TRUE), PRED).pq == 0.0
    assert detection_scores(TRUE, np.zeros_like(TRUE)).recall == 0.0


def test_average_precision_by_hand():
    # true A, B, C; predictions by score: .9 on A (TP), .8 on nothing (FP), .7 on B (TP),
    # .6 on nothing (FP); C is missed.
    # recall    1/3, 1/3, 2/3, 2/3;  precision 1, 1/2, 2/3, 1/2
    # envelope at recall 1/3 is 1, at 2/3 is 2/3, beyond 2/3 is 0:
    # AP = 1/3 * 1 + 1/3 * 2/3 = 5/9
    true = np.zeros((10, 10), dtype=int)
    true[0:3, 0:3] = 1
    true[0:3, 5:8] = 2
    true[6:9, 0:3] = 3
    pred = np.zeros_like(true)
    pred[0:3, 0:3] = 10
    pred[6:9, 6:9] = 11
    pred[0:3, 5:7] = 12  # IoU 6/9 with B
    pred[9, 9] = 13
    scores = {10: 0.9, 11: 0.8, 12: 0.7, 13: 0.6}
    assert average_precision(true, pred, scores) == pytest.approx(5 / 9)
    # pooled over two copies of the image: the same ranks interleave, AP unchanged
    assert average_precision([true, true], [pred, pred], [scores, scores]) == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="no score"):
        average_precision(true, pred, {10: 0.9})
    # all tied: one operating point, recall 2/3 at precision 2/4, so AP = 2/3 * 1/2 whatever the order
    tied = dict.fromkeys(scores, 1.0)
    assert average_precision(true, pred, tied) == pytest.approx(1 / 3)


def test_voc_envelope_ignores_a_dip():
    # recall 0.5 at precision 0.5 then recall 1 at precision 2/3: the envelope is 2/3 everywhere
    assert voc_all_point_ap(np.array([0.5, 1.0]), np.array([0.5, 2 / 3])) == pytest.approx(2 / 3)


def test_real_map_against_itself_and_relabelled(cpm15_dir):
    inst = np.array(Image.open(cpm15_dir / "image01_inst.png")).astype(np.int64)
    ids = np.unique(inst)[1:]
    shuffled = np.zeros(inst.max() + 1, dtype=np.int64)
    shuffled[ids] = np.random.default_rng(0).permutation(ids) + 1000
    relabelled = shuffled[inst]
    for other in (inst, relabelled):
        assert aji(inst, other) == pytest.approx(1.0)
        pq = panoptic_quality(inst, other)
        assert pq.pq == pytest.approx(1.0) and pq.tp == ids.size
    # eroding every object by its boundary lowers AJI and SQ but keeps most matches
    from scipy import ndimage

    eroded = np.where(ndimage.grey_erosion(inst, size=3) == inst, inst, 0)
    assert aji(inst, eroded) < 0.9
    assert panoptic_quality(inst, eroded).sq < 0.95


@pytest.mark.parametrize("offset", [0, 10**9])  # small ids (counted), huge ids (sorted)
def test_overlaps_equal_a_brute_force_count(offset):
    rng = np.random.default_rng(1)
    true = rng.choice([0, 3, 7, 8, 40], size=(30, 40)).astype(np.int64)
    pred = rng.choice([0, 1, 2, 9], size=(30, 40)).astype(np.int64)
    true = np.where(true > 0, true + offset, 0)
    ov = overlaps(true, pred)
    true_ids = sorted(set(np.unique(true)) - {0})
    pred_ids = sorted(set(np.unique(pred)) - {0})
    assert ov.true_ids.tolist() == true_ids and ov.pred_ids.tolist() == pred_ids
    assert ov.true_area.tolist() == [int((true == t).sum()) for t in true_ids]
    assert ov.pred_area.tolist() == [int((pred == q).sum()) for q in pred_ids]
    assert ov.intersection.tolist() == [[int(((true == t) & (pred == q)).sum()) for q in pred_ids] for t in true_ids]
