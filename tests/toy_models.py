"""A model whose output is known pixel by pixel, for tests of the stages around a model."""

from __future__ import annotations

import torch

from wsipipe.models.io import ModelBundle


def toy_threshold_bundle(tile: int = 128, mpp: float = 1.0) -> ModelBundle:
    """Per-pixel rule: tumour where the RGB mean is below 0.55 (purple), else background."""
    net = torch.nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1] = -40.0 / 3
        net.bias[1] = 40.0 * 0.55
    meta = {
        "architecture": "toy-threshold",
        "name": "toy",
        "classes": ["background", "tumour"],
        "mpp": mpp,
        "tile_size": tile,
        "input_normalisation": {"mean": [0.0] * 3, "std": [1.0] * 3},
    }
    return ModelBundle(net.eval(), meta)
