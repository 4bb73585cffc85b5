"""The ``tile`` stage: a slide into a resumable zarr tile store of its tissue tiles.

The public door to ``wsipipe.tiling``: ``run(TileConfig(slide=..., output=...)) -> TileResult``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from wsipipe.errors import InvalidInputError
from wsipipe.stages.base import NOT_BATCH, POSITIVE, Progress, Say, StageConfig, StageResult


@dataclasses.dataclass(frozen=True, kw_only=True)
class TileConfig(StageConfig):
    """``slide`` tiled at ``mpp`` µm/px (or at pyramid ``level``'s own scale, which takes precedence)
    into the store ``output``; ``annotations`` (with an optional ``label_map``) add a label mask per
    tile; ``qc`` ('auto', 'off' or a ``wsipipe qc`` output) leaves flagged areas out."""

    slide: Path = dataclasses.field(metadata=NOT_BATCH)
    output: Path = dataclasses.field(metadata=NOT_BATCH)
    mpp: float = dataclasses.field(default=0.5, metadata=POSITIVE)
    level: int | None = None
    tile_size: int = 512
    overlap: int = 0
    tissue_threshold: float = 0.1
    annotations: Path | None = None
    label_map: str | None = None
    strict: bool = False
    backend: str | None = None
    mpp_override: float | None = dataclasses.field(default=None, metadata=POSITIVE)
    #: Reader threads, one slide handle each (0 or 1: the main thread reads).
    readers: int = dataclasses.field(default=2, metadata=NOT_BATCH)
    overwrite: bool = False
    qc: str = "auto"

    def check(self) -> None:
        from wsipipe.grid import validate_tiling

        super().check()
        validate_tiling(self.tile_size, self.overlap, self.tissue_threshold)
        if self.level is not None and self.level < 0:
            raise InvalidInputError(f"{{level}} must be at least 0, got {self.level}", parameter="level")
        if self.readers < 0:
            raise InvalidInputError(f"{{readers}} must be at least 0, got {self.readers}", parameter="readers")
        if self.annotations is None and (self.label_map is not None or self.strict):
            raise InvalidInputError(
                "{label_map} and {strict} need {annotations}", parameter=("label_map", "strict", "annotations")
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TileResult(StageResult):
    """The store written (or found complete) and what this run did."""

    output: Path
    n_tiles: int
    #: Tiles written by this run (0 when the store was already complete).
    n_written: int
    already_complete: bool
    seconds: float


def run(config: TileConfig, *, progress: Progress | None = None, say: Say | None = None) -> TileResult:
    """Tile ``config.slide`` into ``config.output``, resuming an interrupted run with the same
    parameters; returns at once when the store is already complete (unless ``overwrite``).
    ``progress`` counts tiles; the stage has nothing to ``say``."""
    from wsipipe.tiling import tile_slide

    return tile_slide(config, progress=progress)
