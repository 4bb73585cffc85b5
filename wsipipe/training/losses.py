"""Losses: Dice + cross-entropy (SCLC paper eqs. 1-2), weighted cross-entropy with
w_i = 1 / log(1.10 + f_i) and focal loss (the cellularity paper).

Target pixels labelled ``IGNORE`` count in none of them (``ignore_boundary`` marks them)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from wsipipe.errors import InvalidInputError

LOSSES = ("dice-ce", "weighted-ce", "focal")
#: A target label no loss counts (torch's cross-entropy ``ignore_index``).
IGNORE = -100


def ignore_boundary(target: torch.Tensor, radius: int) -> torch.Tensor:
    """``target`` (N, H, W) with every pixel within ``radius`` px (a square neighbourhood) of
    another class set to ``IGNORE``: a hand-drawn outline is only roughly where the class changes,
    so the pixels near it teach the network the annotator's hand, not the tissue."""
    if radius <= 0:
        return target
    labels = target.float()[:, None]
    size = 2 * radius + 1
    highest = F.max_pool2d(labels, size, 1, radius)
    lowest = -F.max_pool2d(-labels, size, 1, radius)
    return target.masked_fill((highest != lowest)[:, 0], IGNORE)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - mean over classes of 2 sum(p g) / (sum(p) + sum(g)), sums over batch and counted pixels."""
    counted = (target != IGNORE)[:, None].float()
    probs = torch.softmax(logits.float(), dim=1) * counted
    onehot = F.one_hot(target.long().clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2).float() * counted
    dims = (0, 2, 3)
    dice = (2 * (probs * onehot).sum(dims) + eps) / (probs.sum(dims) + onehot.sum(dims) + eps)
    return 1 - dice.mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target.long()) + soft_dice_loss(logits, target)


def class_weights(frequencies) -> torch.Tensor:
    """w_i = 1 / log(1.10 + f_i): rare classes weigh up to ~10.5, a class of frequency 1 ~1.35."""
    return torch.tensor([1 / math.log(1.10 + float(f)) for f in frequencies], dtype=torch.float32)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """mean over counted pixels of -w_t (1 - p_t)^gamma log p_t (gamma 0 and no weight = cross-entropy)."""
    counted = target != IGNORE
    target = target.long().clamp(min=0)
    log_p = torch.log_softmax(logits.float(), dim=1).gather(1, target[:, None])[:, 0]
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    if weight is not None:
        loss = loss * weight.to(loss.device)[target]
    return loss[counted].mean()


def make_loss(name: str, frequencies=None, gamma: float = 2.0):
    """A callable loss(logits, target) by name; weighted-ce needs the training class frequencies."""
    if name == "dice-ce":
        return dice_ce_loss
    if name == "weighted-ce":
        weights = class_weights(frequencies)
        return lambda logits, target: F.cross_entropy(logits.float(), target.long(), weight=weights.to(logits.device))
    if name == "focal":
        return lambda logits, target: focal_loss(logits, target, gamma)
    raise InvalidInputError(f"--loss {name!r}: choose one of {', '.join(LOSSES)}")
