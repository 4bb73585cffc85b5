"""Hand-written U-Net family: the classic U-Net, Attention U-Net and the multi-scale fusion U-Net.

All three share ``ConvBlock`` and ``UNetDecoder`` so the comparison in the SCLC paper's Table 1
differs only in the encoder (and, for Attention U-Net, the gates on the skip connections).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ConvBlock(nn.Sequential):
    """conv3x3 + BatchNorm + ReLU: the unit the papers count in ``blocks``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def conv_blocks(in_channels: int, out_channels: int, count: int) -> nn.Sequential:
    """``count`` ConvBlocks, the first changing the width."""
    layers = [ConvBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(count)]
    return nn.Sequential(*layers)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018): the decoder's coarser features decide which
    skip-connection pixels pass."""

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int):
        super().__init__()
        self.theta_x = nn.Sequential(
            nn.Conv2d(skip_channels, inter_channels, 1, bias=False), nn.BatchNorm2d(inter_channels)
        )
        self.phi_g = nn.Sequential(
            nn.Conv2d(gate_channels, inter_channels, 1, bias=False), nn.BatchNorm2d(inter_channels)
        )
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        gate = F.interpolate(self.phi_g(gate), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        alpha = self.psi(F.relu(self.theta_x(skip) + gate))
        return skip * alpha


class UNetDecoder(nn.Module):
    """U-Net's decoder: transposed-conv up-sampling, concatenation with the skip, two ConvBlocks."""

    def __init__(self, widths: tuple[int, ...], num_classes: int, attention: bool = False, blocks: int = 2):
        super().__init__()
        self.ups = nn.ModuleList()
        self.gates = nn.ModuleList() if attention else None
        self.blocks = nn.ModuleList()
        for deep, shallow in zip(widths[:0:-1], widths[-2::-1]):
            self.ups.append(nn.ConvTranspose2d(deep, shallow, 2, stride=2))
            if self.gates is not None:
                self.gates.append(AttentionGate(shallow, deep, max(shallow // 2, 1)))
            self.blocks.append(conv_blocks(2 * shallow, shallow, blocks))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, skips: list[torch.Tensor], bottom: torch.Tensor) -> torch.Tensor:
        x = bottom
        for index, skip in enumerate(reversed(skips)):
            if self.gates is not None:
                skip = self.gates[index](skip, x)
            x = self.blocks[index](torch.cat([skip, self.ups[index](x)], dim=1))
        return self.head(x)


class ClassicUNet(nn.Module):
    """Ronneberger et al.'s U-Net (widths base x 1,2,4,8,16), optionally with attention gates."""

    def __init__(self, num_classes: int = 2, in_channels: int = 3, base: int = 42, attention: bool = False):
        super().__init__()
        widths = tuple(base * 2**i for i in range(5))
        self.encoder = nn.ModuleList(
            [conv_blocks(in_channels if i == 0 else widths[i - 1], widths[i], 2) for i in range(5)]
        )
        self.decoder = UNetDecoder(widths, num_classes, attention=attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, stage in enumerate(self.encoder):
            if index:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            skips.append(x)
        return self.decoder(skips[:-1], skips[-1])


class _Transition(nn.Module):
    """Carries branch ``source`` (resolution 2**-source) to branch ``target``: 3x3 stride-1 conv at
    the same resolution, one stride-2 3x3 conv per halving when going down, 1x1 conv then bilinear
    up-sampling when going up."""

    def __init__(self, widths: tuple[int, ...], source: int, target: int):
        super().__init__()
        self.scale = 2 ** (source - target)
        cin, cout = widths[source], widths[target]
        self.body: nn.Module
        if source == target:
            self.body = ConvBlock(cin, cout)
        elif source < target:
            steps = [ConvBlock(cin, cout, stride=2)]
            steps += [ConvBlock(cout, cout, stride=2) for _ in range(target - source - 1)]
            self.body = nn.Sequential(*steps)
        else:
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return x


class _FusionStage(nn.Module):
    """One fully connected multi-resolution stage: every output branch sums transitions from every
    input branch, then runs ``blocks`` ConvBlocks."""

    def __init__(self, widths: tuple[int, ...], inputs: int, outputs: int, blocks: int):
        super().__init__()
        self.transitions = nn.ModuleList(
            nn.ModuleList(_Transition(widths, s, t) for s in range(inputs)) for t in range(outputs)
        )
        self.blocks = nn.ModuleList(conv_blocks(widths[t], widths[t], blocks) for t in range(outputs))

    def forward(self, branches: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for transitions, blocks in zip(self.transitions, self.blocks):
            fused = sum(transition(x) for transition, x in zip(transitions, branches))  # type: ignore[call-overload]
            out.append(blocks(F.relu(fused)))  # type: ignore[arg-type]  # a sum of tensors
        return out


class MultiScaleFusionUNet(nn.Module):
    """The SCLC paper's multi-scale fusion U-Net (follows the paper's text).

    A full-resolution U-Net stem, then three fully connected fusion stages that add one
    lower-resolution branch each (2, 3, 4 parallel branches), then a fourth stage where only the
    lowest-resolution branch is down-sampled (to the bottleneck) and the others are convolved to
    become the skip connections of U-Net's decoder. The stem, every branch, the bottleneck and
    every decoder level run ``blocks`` ConvBlocks. The paper gives no widths: branch widths
    base x 1,2,4,8 with base 52 and a 1504-wide bottleneck land at 71.28 M parameters with 2
    blocks and 121.60 M with 4 (the paper: 71.21 M and 122.15 M).
    """

    def __init__(
        self, num_classes: int = 2, in_channels: int = 3, base: int = 52, bottleneck: int = 1504, blocks: int = 2
    ):
        super().__init__()
        widths = tuple(base * 2**i for i in range(4)) + (bottleneck,)
        self.stem = conv_blocks(in_channels, widths[0], blocks)
        self.stages = nn.ModuleList(_FusionStage(widths, n, n + 1, blocks) for n in (1, 2, 3))
        self.skip_convs = nn.ModuleList(ConvBlock(widths[i], widths[i]) for i in range(4))
        self.bottleneck = nn.Sequential(
            ConvBlock(widths[3], widths[4], stride=2), conv_blocks(widths[4], widths[4], blocks)
        )
        self.decoder = UNetDecoder(widths, num_classes, blocks=blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.stem(x)]
        for stage in self.stages:
            branches = stage(branches)
        skips = [conv(b) for conv, b in zip(self.skip_convs, branches)]
        return self.decoder(skips, self.bottleneck(branches[-1]))
