"""Losses: Dice + cross-entropy (SCLC paper eqs. 1-2), weighted cross-entropy with
w_i = 1 / log(1.10 + f_i) and focal loss (the cellularity paper)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from wsipipe.errors import InvalidInputError

LOSSES = ("dice-ce", "weighted-ce", "focal")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - mean over classes of 2 sum(p g) / (sum(p) + sum(g)), sums over batch and pixels."""
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    dice = (2 * (probs * onehot).sum(dims) + eps) / (probs.sum(dims) + onehot.sum(dims) + eps)
    return 1 - dice.mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target.long()) + soft_dice_loss(logits, target)


def class_weights(frequencies) -> torch.Tensor:
    """w_i = 1 / log(1.10 + f_i): rare classes weigh up to ~10.5, a class of frequency 1 ~1.35."""
    return torch.tensor([1 / math.log(1.10 + float(f)) for f in frequencies], dtype=torch.float32)


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """mean of -w_t (1 - p_t)^gamma log p_t (gamma 0 and no weight = cross-entropy)."""
    log_p = torch.log_softmax(logits.float(), dim=1).gather(1, target.long()[:, None])[:, 0]
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    if weight is not None:
        loss = loss * weight.to(loss.device)[target.long()]
    return loss.mean()


def make_loss(name: str, frequencies=None, gamma: float = 2.0):
    """A callable loss(logits, target) by name; weighted-ce needs the training class frequencies."""
    if name == "dice-ce":
        return dice_ce_loss
    if name == "weighted-ce":
        weights = class_weights(frequencies)
        return lambda logits, target: F.cross_entropy(logits.float(), target.long(), weight=weights.to(logits.device))
    if name == "focal":
        return lambda logits, target: focal_loss(logits, target, gamma)
    raise InvalidInputError(f"{{loss}} {name!r}: choose one of {', '.join(LOSSES)}", parameter="loss")
