"""Segmentation-guided cellularity regression (the cellularity paper's network).

A DeepLabV3+ encoder (output stride 16) sees the tumour-bed context; a ResNet's stage-2
features (stride 8) see cell-level detail. The encoder's deepest features are resampled to the
stage-2 grid and concatenated; a 3x3 and a 1x1 convolution, global average pooling, fully
connected layers and a sigmoid give the cellularity score in [0, 1], trained with an L1 loss on
(image, score) pairs. The DeepLabV3+ encoder can be initialised from a trained segmentation
model (``load_segmentation_encoder``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CellularityNet(nn.Module):
    def __init__(self, seg_encoder: str = "resnet34", resnet: str = "resnet18", hidden: int = 256):
        super().__init__()
        import segmentation_models_pytorch as smp
        import torchvision

        deeplab = smp.DeepLabV3Plus(encoder_name=seg_encoder, encoder_weights=None, encoder_output_stride=16, classes=2)
        self.seg_encoder = deeplab.encoder
        net = getattr(torchvision.models, resnet)(weights=None)
        self.stage2 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2)
        last = net.layer2[-1]  # bottleneck ResNets (50 and up) end their blocks with conv3
        stage2_channels = (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels
        channels = self.seg_encoder.out_channels[-1] + stage2_channels
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden // 2, 1, bias=False),
            nn.BatchNorm2d(hidden // 2),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Linear(hidden // 2, hidden // 4), nn.ReLU(inplace=True), nn.Linear(hidden // 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B,) cellularity in [0, 1]; H and W multiples of 16."""
        context = self.seg_encoder(x)[-1]
        detail = self.stage2(x)
        context = F.interpolate(context, size=detail.shape[-2:], mode="bilinear", align_corners=False)
        fused = self.fuse(torch.cat([context, detail], dim=1))
        return torch.sigmoid(self.head(fused.mean(dim=(2, 3)))).squeeze(1)


def cellularity_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between predicted and reference cellularity."""
    return (prediction - target).abs().mean()


def load_segmentation_encoder(model: CellularityNet, segmentation_state: dict[str, torch.Tensor]) -> int:
    """Copy the ``encoder.*`` weights of a trained smp DeepLabV3+ into ``model``; returns how many.

    The segmentation model must use the same encoder; a mismatch raises ``ValueError``.
    """
    encoder_state = {k.removeprefix("encoder."): v for k, v in segmentation_state.items() if k.startswith("encoder.")}
    if not encoder_state:
        raise ValueError("the segmentation weights hold no 'encoder.*' tensors (not an smp model?)")
    try:
        model.seg_encoder.load_state_dict(encoder_state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"segmentation encoder does not fit: {str(exc).splitlines()[0]}") from None
    return len(encoder_state)
