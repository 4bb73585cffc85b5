import math

import pytest
import torch

from wsipipe.errors import InvalidInputError
from wsipipe.training.losses import (
    IGNORE, LOSSES, class_weights, dice_ce_loss, focal_loss, ignore_boundary, make_loss, soft_dice_loss,
)
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


def test_ignore_boundary_marks_pixels_near_another_class_only():
    target = torch.zeros(1, 6, 8, dtype=torch.long)
    target[:, :, 4:] = 1  # a vertical edge between columns 3 and 4
    target[:, 0, 0] = 2  # a one-pixel island of class 2 in the corner
    marked = ignore_boundary(target, 1)
    expected = target.clone()
    expected[:, :, 3:5] = IGNORE
    expected[:, :2, :2] = IGNORE  # the island and its neighbours
    assert torch.equal(marked, expected)
    assert torch.equal(ignore_boundary(target, 0), target)
    assert (ignore_boundary(target, 2) == IGNORE).sum() == 6 * 4 + 3 * 2  # columns 2-5, and the island's rows 0-2 of columns 0-1


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixels_count_in_no_loss(name):
    """The loss is that of the counted pixels alone, whatever the network says at ignored ones."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6)
    target = torch.randint(0, 3, (2, 5, 6))
    ignored = torch.rand(2, 5, 6) < 0.4
    loss = make_loss(name, [0.5, 0.3, 0.2])
    marked = target.masked_fill(ignored, IGNORE)
    changed = torch.where(ignored[:, None], torch.randn_like(logits) * 5, logits)
    assert loss(changed, marked).item() == pytest.approx(loss(logits, marked).item(), rel=1e-6)
    # the counted pixels alone, as a 1-pixel-high image, give the same loss
    counted_logits = logits.permute(1, 0, 2, 3)[:, ~ignored][None, :, None]
    counted_target = target[~ignored][None, None]
    assert loss(logits, marked).item() == pytest.approx(loss(counted_logits, counted_target).item(), rel=1e-5)
    assert loss(logits, marked).item() != pytest.approx(loss(logits, target).item(), rel=1e-3)


def test_poly_lr_values():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100) == 0.0


def test_unknown_loss():
    with pytest.raises(InvalidInputError, match="dice-ce"):
        make_loss("hinge")
