"""The ``normalize`` stage: a tile store in, a stain-normalised tile store out (resumable).

The public door to ``wsipipe.stain.store_stage``: ``run(NormalizeConfig(input=..., output=...))
-> NormalizeResult``. Warnings (a target that is probably not H&E) are Python warnings
(``wsipipe.stain.StainWarning``), each naming what it is about.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from wsipipe.stages.base import NOT_BATCH, Progress, Say, StageConfig, StageResult


@dataclasses.dataclass(frozen=True, kw_only=True)
class NormalizeConfig(StageConfig):
    """The tiles of the store ``input`` normalised by ``method`` onto ``target`` (an H&E image; None:
    the built-in target) into the store ``output``; ``seed`` fixes the pixel sampling."""

    input: Path = dataclasses.field(metadata=NOT_BATCH)
    output: Path = dataclasses.field(metadata=NOT_BATCH)
    method: str = "vahadane"
    target: Path | None = None
    device: str = "auto"
    seed: int = 0
    overwrite: bool = False

    def check(self) -> None:
        from wsipipe.stain import get_normalizer

        super().check()
        get_normalizer(self.method)  # the one check of a method's name


@dataclasses.dataclass(frozen=True, kw_only=True)
class NormalizeResult(StageResult):
    """The normalised store and how it was made."""

    output: Path
    n_tiles: int
    method: str
    #: The torch device that ran (``auto`` resolved).
    device: str


def run(config: NormalizeConfig, *, progress: Progress | None = None, say: Say | None = None) -> NormalizeResult:
    """Normalise every tile of ``config.input`` into ``config.output``; an interrupted run resumes.

    The slide's stain parameters are estimated once (tiles sampled across the whole store) and
    recorded, with the target's, in the output's attributes; a store that is itself normalised is
    refused unless ``overwrite``. ``progress`` counts tiles; ``say`` hears which device runs when
    ``device`` is 'auto' and no GPU is found.
    """
    from wsipipe.device import resolve_device
    from wsipipe.stain.store_stage import normalize_store

    return normalize_store(config, resolve_device(config.device, notify=say), progress=progress)
