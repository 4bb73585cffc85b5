"""Stain normalisation (Vahadane, Macenko, Reinhard) and stain augmentation, torch on CPU or CUDA.

normalizer = get_normalizer("vahadane", device="cpu").fit(default_target("vahadane"))
slide = estimate_slide_stain(store_tiles, normalizer)      # once per slide
out = normalizer.transform(tiles, source=slide)           # every tile reuses it
"""

from __future__ import annotations

from wsipipe.errors import InvalidInputError
from wsipipe.stain.augment import HEDJitter
from wsipipe.stain.base import StainNormalizer, StainParams, StainWarning
from wsipipe.stain.macenko import MacenkoNormalizer
from wsipipe.stain.reinhard import ReinhardNormalizer
from wsipipe.stain.slide import estimate_slide_stain
from wsipipe.stain.targets import default_target
from wsipipe.stain.vahadane import VahadaneNormalizer

NORMALIZERS = {cls.method: cls for cls in (VahadaneNormalizer, MacenkoNormalizer, ReinhardNormalizer)}


def get_normalizer(method: str, device="cpu", *, seed: int = 0) -> StainNormalizer:
    """An unfitted normaliser for ``method`` (vahadane, macenko or reinhard)."""
    try:
        return NORMALIZERS[method](device, seed=seed)
    except KeyError:
        raise InvalidInputError(
            f"{{method}} {method!r}: expected one of {', '.join(NORMALIZERS)}", parameter="method"
        ) from None


__all__ = [
    "HEDJitter",
    "MacenkoNormalizer",
    "NORMALIZERS",
    "ReinhardNormalizer",
    "StainNormalizer",
    "StainParams",
    "StainWarning",
    "VahadaneNormalizer",
    "default_target",
    "estimate_slide_stain",
    "get_normalizer",
]
