"""The one interface every stain normaliser follows, and what they learn (``StainParams``).

A normaliser is fitted to a target (``fit``), estimates a source's stain parameters from one image
or from tiles pooled across a whole slide (``estimate``), and transforms tiles (``transform``),
either estimating each tile on its own (StainTools' behaviour) or reusing a slide's parameters.
Estimation is seeded and deterministic; the per-pixel work runs in torch on ``device``.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from wsipipe.errors import StainError
from wsipipe.stain._ops import (
    LUMINOSITY_THRESHOLD,
    MIN_TISSUE_PIXELS,
    SAMPLE_PIXELS,
    ColourTable,
    for_each_chunk,
    nonneg_lasso_2,
    od_to_rgb,
    optical_density,
    sample_rows,
    tissue_mask,
    to_tile_batch,
    torch_threads,
    unique_colours,
    weighted_percentile,
)


class StainWarning(UserWarning):
    """A tile left unchanged, or stains that do not look like H&E."""


@dataclass(frozen=True)
class StainParams:
    """What a normaliser learns from a target or a source; JSON-ready (stored in tile stores).

    ``values`` per method: vahadane and macenko hold ``stain_matrix`` (2x3, unit optical-density
    vectors, haematoxylin first) and ``max_concentrations`` (99th percentile of each stain's
    concentration); reinhard holds ``mean`` and ``std`` of CIE L*a*b*. ``looks_like_he`` is False
    when the stain vectors are not haematoxylin and eosin (None for reinhard, which has none).
    """

    method: str
    values: Mapping[str, Any]
    looks_like_he: bool | None = None

    def array(self, key: str) -> np.ndarray:
        return np.asarray(self.values[key], dtype=np.float64)

    def to_dict(self) -> dict:
        return {"method": self.method, "looks_like_he": self.looks_like_he, **self.values}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StainParams:
        data = dict(data)
        try:
            method = data.pop("method")
            looks_like_he = data.pop("looks_like_he", None)
        except KeyError as exc:
            raise StainError(f"stain parameters lack {exc}") from None
        return cls(method, {k: v for k, v in data.items()}, looks_like_he)


class StainNormalizer(ABC):
    """Fit to a target, then transform uint8 RGB tiles (numpy or torch, channels last)."""

    method: ClassVar[str]

    def __init__(
        self,
        device: str | torch.device = "cpu",
        *,
        seed: int = 0,
        luminosity_threshold: float = LUMINOSITY_THRESHOLD,
        sample_pixels: int = SAMPLE_PIXELS,
    ):
        self.device = torch.device(device)
        self.seed = seed
        self.luminosity_threshold = luminosity_threshold
        self.sample_pixels = sample_pixels
        self.target: StainParams | None = None
        self._colour_table: tuple | None = None  # ((source, target, threshold), ColourTable)

    def fit(self, target: Any) -> StainNormalizer:
        """Set the target from a reference image (uint8 RGB) or from stored ``StainParams``."""
        if isinstance(target, StainParams):
            self._check_method(target, "target")
            self.target = target
            return self
        try:
            self.target = self.estimate(target)
        except StainError as exc:
            raise StainError(f"target image: {exc}") from None
        return self

    def estimate(self, images: Any, sample_pixels: int | None = None) -> StainParams:
        """Stain parameters of one image or of a batch of tiles pooled together (one estimate).

        Statistics come from all the pixels, or from a seeded sample of ``sample_pixels`` of them
        when there are more (default ``self.sample_pixels``). Raises ``StainError`` when there is too
        little tissue; warns (``StainWarning``) when the stains do not look like H&E.
        """
        batch, _ = to_tile_batch(images)
        pixels = batch.to(self.device).reshape(-1, 3)
        return self._estimate_sampled(pixels, sample_pixels or self.sample_pixels)

    def transform(self, tiles: Any, source: StainParams | None = None) -> Any:
        """Normalised copy of ``tiles`` ((H, W, 3) or (N, H, W, 3) uint8), same type and device.

        With ``source`` (e.g. a slide's parameters from ``estimate_slide_stain``) every tile reuses
        it; without, each tile is estimated on its own. Tiles without tissue come back unchanged,
        as do tiles whose stains cannot be estimated (with a ``StainWarning``).
        """
        self.fitted_target()
        if source is not None:
            self._check_method(source, "source")
        batch, give_back = to_tile_batch(tiles)
        if source is not None and self.device.type == "cpu":
            return give_back(self._map_by_colour(batch, source))
        pixels = batch.to(self.device, non_blocking=True)
        count = pixels.shape[0]
        flat = pixels.reshape(count, -1, 3)
        has_tissue = tissue_mask(flat, self.luminosity_threshold).any(dim=1)
        out = pixels.clone()
        if source is not None:
            chosen = torch.nonzero(has_tissue).squeeze(1)
            if chosen.numel() == count:
                out = self._apply(flat.reshape(-1, 3), source).reshape(pixels.shape)
            elif chosen.numel():
                normalised = self._apply(flat[chosen].reshape(-1, 3), source)
                out[chosen] = normalised.reshape((chosen.numel(),) + tuple(pixels.shape[1:]))
            return give_back(out)
        for index in torch.nonzero(has_tissue).squeeze(1).tolist():
            try:
                out[index] = self._normalise_alone(flat[index]).reshape(pixels.shape[1:])
            except StainError as exc:
                warnings.warn(f"tile {index} left unchanged: {exc}", StainWarning, stacklevel=2)
        return give_back(out)

    def fitted_target(self) -> StainParams:
        """The target ``fit`` set; RuntimeError before ``fit``."""
        if self.target is None:
            raise RuntimeError(f"{type(self).__name__}.transform called before fit()")
        return self.target

    def _map_by_colour(self, batch: torch.Tensor, source: StainParams) -> torch.Tensor:
        """``transform(batch, source)`` on the CPU, through a table of the colours seen so far
        (kept while the source, the target and the threshold stay the same): the same result."""
        key = (source, self.target, self.luminosity_threshold)
        if self._colour_table is None or self._colour_table[0] != key:
            table = ColourTable(
                lambda colours: self._apply(colours, source),
                lambda colours: tissue_mask(colours, self.luminosity_threshold),
            )
            self._colour_table = (key, table)
        pixels = np.ascontiguousarray(batch.cpu().numpy())
        mapped, has_tissue = self._colour_table[1](pixels)
        mapped[~has_tissue] = pixels[~has_tissue]  # tiles without tissue stay as they are
        return torch.from_numpy(mapped)

    def _normalise_alone(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` (one tile, (P, 3)) mapped with their own estimate; StainError when none."""
        return self._apply(pixels, self._estimate_sampled(pixels, self.sample_pixels))

    def _estimate_sampled(self, pixels: torch.Tensor, sample_pixels: int) -> StainParams:
        rng = np.random.default_rng(self.seed)
        with torch_threads(1):
            params = self._estimate(sample_rows(pixels, sample_pixels, rng))
        if params.looks_like_he is False:
            warnings.warn(
                f"{self.method}: the stain vectors are far from haematoxylin and eosin "
                f"({_format_matrix(params)}); the image is probably not H&E",
                StainWarning,
                stacklevel=3,
            )
        return params

    def _require_tissue(self, tissue: int, total: int) -> None:
        """StainError when fewer than ``MIN_TISSUE_PIXELS`` of ``total`` pixels are tissue."""
        if tissue < MIN_TISSUE_PIXELS:
            raise StainError(
                f"too little tissue: {tissue} of {total} pixels are darker than "
                f"the luminosity threshold {self.luminosity_threshold} (need {MIN_TISSUE_PIXELS})"
            )

    def _check_method(self, params: StainParams, role: str) -> None:
        if params.method != self.method:
            raise StainError(f"{role} parameters are for {params.method!r}, not {self.method!r}")

    @abstractmethod
    def _estimate(self, pixels: torch.Tensor) -> StainParams:
        """Parameters of the uint8 pixels ``(P, 3)``; StainError when they cannot be estimated."""

    @abstractmethod
    def _apply(self, pixels: torch.Tensor, source: StainParams) -> torch.Tensor:
        """Map uint8 pixels ``(P, 3)`` with parameters ``source`` onto ``self.target``."""


class TwoStainNormalizer(StainNormalizer):
    """Stain-matrix methods (Vahadane, Macenko): OD = concentrations x stain matrix.

    Estimation works on the distinct colours of the (sampled) pixels weighted by their counts:
    the stain matrix is learned from all the tissue pixels and the 99th percentiles are taken
    over all the pixels, exactly as on the pixels themselves. A source is mapped by solving each pixel's concentrations against its own stain matrix
    (non-negative lasso), scaling them so the 99th percentiles match the target's, and
    rebuilding the pixel with the target's stain matrix.
    """

    #: L1 penalty of the per-pixel concentrations (StainTools' ``get_concentrations``).
    concentration_penalty = 0.01

    @abstractmethod
    def stain_matrix(self, od: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """2x3 unit stain vectors, haematoxylin first, from tissue optical densities (n, 3), each
        standing for ``counts`` pixels."""

    def _estimate(self, pixels: torch.Tensor) -> StainParams:
        distinct, counts = unique_colours(pixels)
        colours = torch.from_numpy(distinct)
        tissue = tissue_mask(colours, self.luminosity_threshold).numpy()
        self._require_tissue(int(counts[tissue].sum()), int(counts.sum()))
        od = optical_density(colours).double()
        matrix = order_haematoxylin_first(self.stain_matrix(od[tissue].numpy(), counts[tissue]))
        separation = np.degrees(np.arccos(np.clip(matrix[0] @ matrix[1], -1.0, 1.0)))
        if not 1.0 <= separation <= 90.0:
            raise StainError(
                f"could not separate two stains (vectors {separation:.2f} degrees apart); is this stained tissue?"
            )
        concentrations = nonneg_lasso_2(od, torch.from_numpy(matrix), self.concentration_penalty)
        max_concentrations = weighted_percentile(concentrations.numpy(), counts, 99.0)
        if not np.all(max_concentrations > 0):
            raise StainError("a stain has no concentration above zero in 99% of the pixels")
        return StainParams(
            self.method,
            {"stain_matrix": matrix.tolist(), "max_concentrations": max_concentrations.tolist()},
            looks_like_he=looks_like_he(matrix),
        )

    def _concentrations(self, pixels: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        return nonneg_lasso_2(optical_density(pixels).reshape(-1, 3), matrix, self.concentration_penalty)

    def _apply(self, pixels: torch.Tensor, source: StainParams) -> torch.Tensor:
        device = pixels.device
        target = self.fitted_target()
        source_matrix = torch.as_tensor(source.array("stain_matrix"), dtype=torch.float32, device=device)
        scale = target.array("max_concentrations") / source.array("max_concentrations")
        # scaling concentrations then mixing with the target's stains is one 2x3 matrix
        rebuild = torch.as_tensor(scale[:, None] * target.array("stain_matrix"), dtype=torch.float32, device=device)

        def step(chunk: torch.Tensor) -> torch.Tensor:
            return od_to_rgb(self._concentrations(chunk, source_matrix) @ rebuild)

        return for_each_chunk(pixels, step)


def order_haematoxylin_first(matrix: np.ndarray) -> np.ndarray:
    """Unit rows, the bluer stain (more red absorbed: haematoxylin) first."""
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix = matrix / np.where(norms > 0, norms, 1.0)
    return matrix if matrix[0, 0] >= matrix[1, 0] else matrix[::-1].copy()


def looks_like_he(matrix: np.ndarray) -> bool:
    """H&E: eosin (pink) absorbs green most, haematoxylin (blue-purple) red or green most.

    A stain absorbing blue most (DAB's brown in IHC, many special stains) is not H&E.
    """
    strongest = np.argmax(np.asarray(matrix), axis=1)
    return bool(strongest[0] in (0, 1) and strongest[1] == 1)


def _format_matrix(params: StainParams) -> str:
    if "stain_matrix" not in params.values:
        return params.method
    rows = params.array("stain_matrix")
    return "; ".join("OD RGB " + ", ".join(f"{v:.2f}" for v in row) for row in rows)
