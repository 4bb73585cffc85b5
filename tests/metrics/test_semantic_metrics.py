import numpy as np
import pytest

from wsipipe.metrics.semantic import (
    ConfusionMatrix,
    cohen_kappa,
    dice_per_class,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)

TRUTH = np.array([[0, 0, 1], [1, 1, 2]])
PRED = np.array([[0, 1, 1], [1, 2, 2]])
# by hand: class 0: TP 1, FP 0, FN 1 ; class 1: TP 2, FP 1, FN 1 ; class 2: TP 1, FP 1, FN 0


def test_confusion_counts_by_hand():
    cm = ConfusionMatrix(3).update(PRED, TRUTH)
    assert cm.counts.tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]


def test_iou_dice_accuracy_kappa_by_hand():
    counts = ConfusionMatrix(3).update(PRED, TRUTH).counts
    np.testing.assert_allclose(iou_per_class(counts), [1 / 2, 2 / 4, 1 / 2])
    np.testing.assert_allclose(dice_per_class(counts), [2 / 3, 4 / 6, 2 / 3])
    assert mean_iou(counts) == pytest.approx(0.5)
    assert pixel_accuracy(counts) == pytest.approx(4 / 6)
    # p_o = 4/6; truth marginals 2,3,1; prediction marginals 1,3,2: p_e = (2+9+2)/36
    pe = 13 / 36
    assert cohen_kappa(counts) == pytest.approx((4 / 6 - pe) / (1 - pe))


def test_accumulates_over_images_not_per_image_mean():
    cm = ConfusionMatrix(2)
    cm.update(np.ones(4, int), np.ones(4, int))  # perfect image: 4 px of class 1
    cm.update(np.array([1, 0]), np.array([0, 0]))  # one class-0 px wrong
    # class 0: TP 1, FN 1, FP 0 -> 1/2; class 1: TP 4, FP 1 -> 4/5
    np.testing.assert_allclose(iou_per_class(cm.counts), [0.5, 0.8])
    assert cm.summary(["bg", "tumour"])["iou"] == {"bg": 0.5, "tumour": 0.8}


def test_absent_class_is_excluded_from_mean_and_null_in_json():
    cm = ConfusionMatrix(3).update(np.zeros(5, int), np.zeros(5, int))
    assert mean_iou(cm.counts) == 1.0
    assert cm.summary()["iou"]["2"] is None
    assert cohen_kappa(cm.counts) == 1.0


def test_ignore_index_and_bad_classes():
    cm = ConfusionMatrix(2).update(np.array([0, 1, 1]), np.array([0, 255, 1]), ignore_index=255)
    assert cm.counts.tolist() == [[1, 0], [0, 1]]
    with pytest.raises(ValueError, match="outside"):
        ConfusionMatrix(2).update(np.array([2]), np.array([0]))
