"""Reinhard et al. 2001: match the mean and spread of each CIE L*a*b* channel to the target's.

On the CPU every pass is one OpenCV call (its float L*a*b* conversion, within 0.2 of the CIE
formulas in L*, 0.5 in a* and b*; a colour comes back to itself within 1.3 levels, 98 % exactly);
on other devices the CIE formulas run in torch.
"""

from __future__ import annotations

import numpy as np
import torch

from wsipipe.stain._ops import CHUNK_PIXELS, SRGB_LINEAR, for_each_chunk, lookup
from wsipipe.stain.base import StainNormalizer, StainParams

_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_WHITE = np.array([0.950456, 1.0, 1.088754])  # D65
_EPSILON = 0.008856
_UNIT = np.arange(256) / 255.0


def rgb_to_lab(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 sRGB ``(P, 3)`` -> float32 CIE L*a*b* (L in 0-100), D65."""
    if pixels.device.type != "cpu":
        return rgb_to_lab_torch(pixels)
    import cv2

    unit = lookup(pixels, _UNIT).numpy().reshape(1, -1, 3)
    return torch.from_numpy(cv2.cvtColor(unit, cv2.COLOR_RGB2Lab).reshape(-1, 3))


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """float32 CIE L*a*b* ``(P, 3)`` -> uint8 sRGB, rounded and clipped."""
    if lab.device.type != "cpu":
        return lab_to_rgb_torch(lab)
    import cv2

    unit = cv2.cvtColor(lab.numpy().reshape(1, -1, 3), cv2.COLOR_Lab2RGB)  # clipped to [0, 1]
    return torch.from_numpy(cv2.convertScaleAbs(unit, alpha=255.0).reshape(-1, 3))


def rgb_to_lab_torch(pixels: torch.Tensor) -> torch.Tensor:
    linear = lookup(pixels, SRGB_LINEAR)
    to_xyz = torch.as_tensor(_RGB_TO_XYZ / _WHITE[:, None], dtype=torch.float32, device=pixels.device)
    xyz = linear @ to_xyz.T
    f = torch.where(xyz > _EPSILON, xyz.clamp(min=_EPSILON) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1)


def lab_to_rgb_torch(lab: torch.Tensor) -> torch.Tensor:
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1)
    xyz = torch.where(f > 6 / 29, f**3, (f - 16 / 116) / 7.787)
    from_xyz = torch.as_tensor(np.linalg.inv(_RGB_TO_XYZ / _WHITE[:, None]), dtype=torch.float32, device=lab.device)
    linear = (xyz @ from_xyz.T).clamp(0, 1)
    srgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return (srgb * 255).round_().clamp_(0, 255).to(torch.uint8)


def lab_statistics(lab: torch.Tensor, lightness_below: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and standard deviation (float64) of each channel of ``lab`` (P, 3), and how many
    pixels have L* below ``lightness_below``."""
    if lab.device.type != "cpu":
        std, mean = torch.std_mean(lab.double(), dim=0, correction=0)
        return mean.cpu().numpy(), std.cpu().numpy(), int((lab[:, 0] < lightness_below).sum())
    import cv2

    image = lab.numpy().reshape(1, -1, 3)
    mean_column, std_column = cv2.meanStdDev(image)
    return mean_column.ravel(), std_column.ravel(), int(np.count_nonzero(image[0, :, 0] < lightness_below))


def scale_and_shift(lab: torch.Tensor, gain: np.ndarray, offset: np.ndarray) -> torch.Tensor:
    """``lab * gain + offset`` per channel, in one pass."""
    if lab.device.type != "cpu":
        as_tensor = lambda values: torch.as_tensor(values, dtype=torch.float32, device=lab.device)  # noqa: E731
        return torch.addcmul(as_tensor(offset), lab, as_tensor(gain))
    import cv2

    affine = np.hstack([np.diag(gain), np.asarray(offset)[:, None]]).astype(np.float32)
    return torch.from_numpy(cv2.transform(lab.numpy().reshape(1, -1, 3), affine).reshape(-1, 3))


class ReinhardNormalizer(StainNormalizer):
    """Colour-statistics transfer; no stain separation (a baseline). Statistics of all pixels."""

    method = "reinhard"

    def _estimate(self, pixels: torch.Tensor) -> StainParams:
        return self._statistics(rgb_to_lab(pixels))

    def _apply(self, pixels: torch.Tensor, source: StainParams) -> torch.Tensor:
        return for_each_chunk(pixels, lambda chunk: self._transfer(rgb_to_lab(chunk), source))

    def _normalise_alone(self, pixels: torch.Tensor) -> torch.Tensor:
        """Estimated and mapped from one L*a*b* conversion (when the estimate uses every pixel)."""
        if pixels.shape[0] > min(self.sample_pixels, CHUNK_PIXELS):
            return super()._normalise_alone(pixels)
        lab = rgb_to_lab(pixels)
        return self._transfer(lab, self._statistics(lab))

    def _statistics(self, lab: torch.Tensor) -> StainParams:
        # tissue: L* below the threshold (tissue_mask's rule, read off the L*a*b* at hand)
        mean, std, tissue = lab_statistics(lab, 100.0 * self.luminosity_threshold)
        self._require_tissue(tissue, lab.shape[0])  # a target or tile without tissue is refused like the others
        return StainParams(self.method, {"mean": mean.tolist(), "std": std.tolist()})

    def _transfer(self, lab: torch.Tensor, source: StainParams) -> torch.Tensor:
        """(lab - source mean) / source std * target std + target mean, back to uint8 RGB."""
        target = self.fitted_target()
        gain = target.array("std") / np.maximum(source.array("std"), 1e-6)
        offset = target.array("mean") - source.array("mean") * gain
        return lab_to_rgb(scale_and_shift(lab, gain, offset))
