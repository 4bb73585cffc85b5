"""Segmentation architectures by name, and model files (safetensors weights + JSON metadata).

``build_model(name, num_classes, **args)`` is the one way to make a network; ``load_model`` and
``save_model`` (in ``wsipipe.models.io``) are the one way to read and write one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wsipipe.errors import InvalidInputError


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    build: Callable[..., Any]  # build(num_classes, **args) -> torch.nn.Module
    defaults: dict[str, Any] = field(default_factory=dict)
    input_multiple: int = 32  # tile sides must be a multiple of this


def _smp_unet(num_classes: int, encoder: str = "resnet34", decoder_channels: tuple = (256, 128, 64, 32, 16)):
    import segmentation_models_pytorch as smp

    return smp.Unet(
        encoder_name=encoder, encoder_weights=None, classes=num_classes, decoder_channels=tuple(decoder_channels)
    )


def _smp_deeplabv3plus(num_classes: int, encoder: str = "resnet34"):
    import segmentation_models_pytorch as smp

    return smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=None, classes=num_classes, encoder_output_stride=16)


def _classic(attention: bool):
    def build(num_classes: int, base: int = 42):
        from wsipipe.models.unet_family import ClassicUNet

        return ClassicUNet(num_classes=num_classes, base=base, attention=attention)

    return build


def _msf_unet(num_classes: int, blocks: int = 2, base: int = 52, bottleneck: int = 1504):
    from wsipipe.models.unet_family import MultiScaleFusionUNet

    if blocks < 1:
        raise InvalidInputError(f"msf-unet: blocks must be >= 1, got {blocks}")
    return MultiScaleFusionUNet(num_classes=num_classes, blocks=blocks, base=base, bottleneck=bottleneck)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in [
        Architecture(
            "unet",
            "segmentation-models-pytorch U-Net; any smp encoder (args: encoder, decoder_channels)",
            _smp_unet,
            {"encoder": "resnet34", "decoder_channels": [256, 128, 64, 32, 16]},
        ),
        Architecture(
            "plain-unet", "Ronneberger's U-Net, widths base x 1..16 (args: base)", _classic(False), {"base": 42}, 16
        ),
        Architecture(
            "attention-unet",
            "U-Net with additive attention gates on the skips, Oktay et al. (args: base)",
            _classic(True),
            {"base": 42},
            16,
        ),
        Architecture(
            "msf-unet",
            "the SCLC paper's multi-scale fusion U-Net (args: blocks 2 or 4, base, bottleneck)",
            _msf_unet,
            {"blocks": 2, "base": 52, "bottleneck": 1504},
            16,
        ),
        Architecture(
            "deeplabv3plus",
            "segmentation-models-pytorch DeepLabV3+, output stride 16 (args: encoder)",
            _smp_deeplabv3plus,
            {"encoder": "resnet34"},
            16,
        ),
    ]
}


def _usnet(
    num_classes: int,
    base: int = 32,
    depth: int = 4,
    anchor_sizes: tuple = ((24, 34), (12, 17), (6, 8.5)),
    distance: bool = False,
):
    from wsipipe.models.usnet import USNet

    return USNet(base=base, depth=depth, anchor_sizes=tuple(tuple(s) for s in anchor_sizes), distance=distance)


def _cellularity(num_classes: int, seg_encoder: str = "resnet34", resnet: str = "resnet18", hidden: int = 256):
    from wsipipe.models.cellularity import CellularityNet

    return CellularityNet(seg_encoder=seg_encoder, resnet=resnet, hidden=hidden)


ARCHITECTURES.update(
    {
        "usnet": Architecture(
            "usnet",
            "US-Net nuclei: U-Net + segmentation and anchor detection branches (args: base, depth, anchor_sizes, distance)",
            _usnet,
            {"base": 32, "depth": 4, "anchor_sizes": [[24, 34], [12, 17], [6, 8.5]], "distance": False},
            16,
        ),
        "cellularity": Architecture(
            "cellularity",
            "cellularity regression: DeepLabV3+ encoder + ResNet stage 2, pooled, sigmoid (args: seg_encoder, resnet, hidden)",
            _cellularity,
            {"seg_encoder": "resnet34", "resnet": "resnet18", "hidden": 256},
            16,
        ),
    }
)


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown model architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}"
        ) from None


def resolve_args(name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The architecture's defaults updated with ``args``; unknown argument names are a usage error."""
    arch = get_architecture(name)
    args = dict(args or {})
    unknown = sorted(set(args) - set(arch.defaults))
    if unknown:
        raise InvalidInputError(
            f"{name}: unknown argument(s) {', '.join(unknown)}; it takes {', '.join(arch.defaults) or 'none'}"
        )
    return {**arch.defaults, **args}


def build_model(name: str, num_classes: int, args: dict[str, Any] | None = None):
    """A freshly initialised network (never downloads weights)."""
    try:
        return get_architecture(name).build(num_classes, **resolve_args(name, args))
    except (KeyError, ValueError) as exc:  # e.g. an smp encoder name that does not exist
        raise InvalidInputError(f"{name}: cannot build with {args}: {exc}") from None


def parameter_count(name: str, num_classes: int = 2, args: dict[str, Any] | None = None) -> int:
    """Trainable parameters, counted on the meta device (no memory, no initialisation time)."""
    import torch

    with torch.device("meta"):
        model = build_model(name, num_classes, args)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
