"""Reinhard et al. 2001: match the mean and spread of each CIE L*a*b* channel to the target's."""

from __future__ import annotations

import numpy as np
import torch

from wsipipe.stain._ops import SRGB_LINEAR, for_each_chunk, lookup
from wsipipe.stain.base import StainNormalizer, StainParams

_RGB_TO_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = np.array([0.950456, 1.0, 1.088754])  # D65
_EPSILON = 0.008856


def rgb_to_lab(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 sRGB ``(P, 3)`` -> float32 CIE L*a*b* (L in 0-100)."""
    linear = lookup(pixels, SRGB_LINEAR)
    to_xyz = torch.as_tensor(_RGB_TO_XYZ / _WHITE[:, None], dtype=torch.float32, device=pixels.device)
    xyz = linear @ to_xyz.T
    f = torch.where(xyz > _EPSILON, xyz.clamp(min=_EPSILON) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack(
        [116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1
    )


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """float CIE L*a*b* ``(P, 3)`` -> uint8 sRGB, rounded and clipped."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1)
    xyz = torch.where(f > 6 / 29, f**3, (f - 16 / 116) / 7.787)
    from_xyz = torch.as_tensor(
        np.linalg.inv(_RGB_TO_XYZ / _WHITE[:, None]), dtype=torch.float32, device=lab.device
    )
    linear = (xyz @ from_xyz.T).clamp(0, 1)
    srgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return (srgb * 255).round_().clamp_(0, 255).to(torch.uint8)


class ReinhardNormalizer(StainNormalizer):
    """Colour-statistics transfer; no stain separation (a baseline). Statistics of all pixels."""

    method = "reinhard"

    def _estimate(self, pixels: torch.Tensor, rng: np.random.Generator) -> StainParams:
        self._tissue(pixels)  # a target or tile without tissue is refused like the others
        lab = rgb_to_lab(pixels).double()
        return StainParams(
            self.method,
            {"mean": lab.mean(dim=0).cpu().tolist(), "std": lab.std(dim=0).cpu().tolist()},
        )

    def _apply(self, pixels: torch.Tensor, source: StainParams) -> torch.Tensor:
        def as_tensor(values: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(values, dtype=torch.float32, device=pixels.device)

        source_std = np.maximum(source.array("std"), 1e-6)
        gain = as_tensor(self.target.array("std") / source_std)
        offset = as_tensor(self.target.array("mean") - source.array("mean") * self.target.array("std") / source_std)
        return for_each_chunk(pixels, lambda chunk: lab_to_rgb(rgb_to_lab(chunk) * gain + offset))
