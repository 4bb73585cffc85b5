"""Stain augmentation for training: HED jitter (Tellez et al. 2018).

Each image's optical density is split into haematoxylin, eosin and a residual (DAB) channel with a
fixed stain matrix (Ruifrok & Johnston's by default, or a slide's Vahadane vectors); the H and E
concentrations are scaled by ``U(1 - sigma_scale, 1 + sigma_scale)`` and shifted by
``U(-sigma_shift, sigma_shift)``, one draw per image and stain, then the image is rebuilt.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wsipipe.stain._ops import od_to_rgb, optical_density, to_tile_batch
from wsipipe.stain.base import StainParams

#: Ruifrok & Johnston (2001) haematoxylin, eosin and DAB optical-density vectors.
RUIFROK_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


class HEDJitter:
    """A seeded random transform of uint8 RGB images ((H, W, 3) or (N, H, W, 3), numpy or torch).

    Deterministic: the same seed gives the same sequence of outputs. ``stains`` may be a
    vahadane/macenko ``StainParams`` whose two vectors replace H and E (the residual is their
    cross product). With both sigmas 0 it returns its input (pixels of value 0 read as 1).
    """

    def __init__(
        self,
        sigma_scale: float = 0.05,
        sigma_shift: float = 0.05,
        *,
        seed: int = 0,
        stains: StainParams | None = None,
    ):
        self.sigma_scale = sigma_scale
        self.sigma_shift = sigma_shift
        self.rng = np.random.default_rng(seed)
        if stains is None:
            matrix = RUIFROK_HED
        else:
            two = stains.array("stain_matrix")
            matrix = np.vstack([two, np.abs(np.cross(two[0], two[1]))])
        self.matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)

    def __call__(self, images: Any) -> Any:
        return self.apply(images, self.rng)

    def apply(self, images: Any, rng: np.random.Generator) -> Any:
        """As calling it, but drawing from ``rng``: a caller with its own seeded (and checkpointed)
        stream, like the training loop, stays reproducible and resumable."""
        batch, give_back = to_tile_batch(images)
        count = batch.shape[0]
        scale = rng.uniform(1 - self.sigma_scale, 1 + self.sigma_scale, size=(count, 2))
        shift = rng.uniform(-self.sigma_shift, self.sigma_shift, size=(count, 2))
        device = batch.device
        matrix = torch.as_tensor(self.matrix, dtype=torch.float32, device=device)
        unmix = torch.linalg.inv(matrix)
        gains = torch.ones((count, 1, 3), dtype=torch.float32, device=device)
        offsets = torch.zeros((count, 1, 3), dtype=torch.float32, device=device)
        gains[:, 0, :2] = torch.as_tensor(scale, dtype=torch.float32, device=device)
        offsets[:, 0, :2] = torch.as_tensor(shift, dtype=torch.float32, device=device)
        concentrations = optical_density(batch.reshape(count, -1, 3)) @ unmix
        od = (concentrations * gains + offsets) @ matrix
        return give_back(od_to_rgb(od.clamp(min=0)).reshape(batch.shape))
