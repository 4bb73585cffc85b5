"""One stain estimate per slide, from tissue tiles sampled across all of it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, cast

import numpy as np

from wsipipe.errors import StainError
from wsipipe.stain.base import StainNormalizer, StainParams

#: Tiles pooled for a slide estimate: enough to cover the slide, few enough to read quickly.
SLIDE_SAMPLE_TILES = 64
#: Pooled pixels a slide estimate uses (a seeded sample of the up to 16.7 M of 64 tiles of 512 px).
SLIDE_SAMPLE_PIXELS = 1_000_000


class IndexedTiles(Protocol):
    """Tiles by index, with ``len()`` or a ``shape``: a list, a numpy or zarr array, a lazy reader."""

    def __getitem__(self, index: int, /) -> Any: ...


def sample_tile_indices(count: int, max_tiles: int, seed: int) -> list[int]:
    """At most ``max_tiles`` of ``count`` indices, one seeded pick per equal stratum.

    Tile stores list tiles in slide order, so strata spread the sample over the whole slide.
    """
    if count <= max_tiles:
        return list(range(count))
    rng = np.random.default_rng(seed)
    edges = np.linspace(0, count, max_tiles + 1).astype(np.int64)
    return [int(rng.integers(low, high)) for low, high in zip(edges[:-1], edges[1:])]


def estimate_slide_stain(
    tiles_or_sampler: IndexedTiles | Iterable[Any],
    normalizer: StainNormalizer,
    *,
    max_tiles: int = SLIDE_SAMPLE_TILES,
    sample_pixels: int = SLIDE_SAMPLE_PIXELS,
) -> StainParams:
    """The slide's stain parameters, estimated once from tiles pooled across the slide.

    ``tiles_or_sampler`` is either a sequence of tiles (``[i]`` and ``len()`` or ``shape``: an
    (N, H, W, 3) numpy or zarr array, a list), of which ``max_tiles`` are sampled in strata (seeded by
    ``normalizer.seed``), or any other iterable of tiles, all of which are used (the caller
    sampled them, e.g. regions read across a slide). The statistics use all the pooled pixels, or a
    seeded sample of ``sample_pixels`` of them when more. Reuse the result with
    ``normalizer.transform(tiles, source=params)`` for every tile of the slide.
    """
    count = _length(tiles_or_sampler)
    if count is not None:
        indexed = cast(IndexedTiles, tiles_or_sampler)  # _length found ``[i]``
        picked = sample_tile_indices(count, max_tiles, normalizer.seed)
        tiles = [np.asarray(indexed[i]) for i in picked]
    else:  # an iterable, or ``[i]`` until IndexError
        tiles = [np.asarray(tile) for tile in cast(Iterable[Any], tiles_or_sampler)]
    if not tiles:
        raise StainError("no tiles to estimate the slide's stains from")
    channels = {tile.shape[-1] for tile in tiles}
    if len(channels) != 1 or any(tile.ndim != 3 for tile in tiles):
        raise StainError("slide tiles must all be (H, W, 3) or all (H, W, 4) images")
    pooled = np.concatenate([tile.reshape(-1, tile.shape[-1]) for tile in tiles])
    return normalizer.estimate(pooled[:, None, :], sample_pixels=sample_pixels)


def _length(tiles: Any) -> int | None:
    """How many tiles a sequence holds (zarr arrays have a shape but no ``len()``); None for an iterable."""
    if not hasattr(tiles, "__getitem__"):
        return None
    if hasattr(tiles, "__len__"):
        return len(tiles)
    shape = getattr(tiles, "shape", None)
    return int(shape[0]) if shape else None
