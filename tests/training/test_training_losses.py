import math

import pytest
import torch

from wsipipe.errors import InvalidInputError
from wsipipe.training.losses import class_weights, dice_ce_loss, focal_loss, make_loss, soft_dice_loss
from wsipipe.training.trainer import poly_lr


def test_dice_ce_by_hand():
    logits = torch.zeros(1, 2, 1, 1)  # p = (0.5, 0.5)
    target = torch.ones(1, 1, 1, dtype=torch.long)
    # CE = ln 2; Dice class 0: 0 / 0.5 = 0, class 1: 2 * 0.5 / (0.5 + 1) = 2/3 -> loss 1 - 1/3
    assert soft_dice_loss(logits, target).item() == pytest.approx(2 / 3, abs=1e-5)
    assert dice_ce_loss(logits, target).item() == pytest.approx(math.log(2) + 2 / 3, abs=1e-5)


def test_perfect_prediction_has_near_zero_dice_ce():
    target = torch.tensor([[[0, 1], [1, 0]]])
    logits = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 50
    assert dice_ce_loss(logits, target).item() < 1e-6


def test_class_weights_formula():
    w = class_weights([0.9, 0.1])
    assert w.tolist() == pytest.approx([1 / math.log(2.0), 1 / math.log(1.2)], rel=1e-6)


def test_weighted_ce_by_hand():
    # two pixels: class 0 predicted with p 0.5, class 1 with p = e^1 / (1 + e^1)
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    loss = make_loss("weighted-ce", [0.9, 0.1])(logits, target).item()
    w0, w1 = 1 / math.log(2.0), 1 / math.log(1.2)
    nll0, nll1 = math.log(2), -math.log(math.e / (1 + math.e))
    assert loss == pytest.approx((w0 * nll0 + w1 * nll1) / (w0 + w1), rel=1e-5)


def test_focal_by_hand_and_gamma_zero_is_ce():
    logits = torch.zeros(1, 2, 1, 1)
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    assert focal_loss(logits, target, gamma=2).item() == pytest.approx(0.25 * math.log(2), rel=1e-6)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    assert focal_loss(logits, target, gamma=0).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-5
    )


def test_poly_lr_values():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100) == 0.0


def test_unknown_loss():
    with pytest.raises(InvalidInputError, match="dice-ce"):
        make_loss("hinge")
