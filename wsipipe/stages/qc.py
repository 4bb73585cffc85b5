"""The ``qc`` stage: a slide's quality control (artefact masks, usable tissue, verdict) written as
qc.json, qc.zarr and qc.png into a folder.

The public door to ``wsipipe.qc``: ``run(QcConfig(slide=..., output=...)) -> QcResult``, whose
fields are qc.json's figures (``to_json()`` is qc.json's content).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from wsipipe.stages.base import NOT_BATCH, POSITIVE, Progress, Say, StageConfig, StageResult


@dataclasses.dataclass(frozen=True, kw_only=True)
class QcConfig(StageConfig):
    """Quality control of ``slide`` into the folder ``output``."""

    slide: Path = dataclasses.field(metadata=NOT_BATCH)
    output: Path = dataclasses.field(metadata=NOT_BATCH)
    backend: str | None = None
    mpp_override: float | None = dataclasses.field(default=None, metadata=POSITIVE)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QcResult(StageResult):
    """qc.json's figures (``docs/qc.md`` says what each means), in its order, and the folder."""

    NOT_IN_JSON: ClassVar[tuple[str, ...]] = ("output",)

    output: Path
    slide: str
    width: int
    height: int
    mpp: float | None
    #: The µm/px assumed when the slide records none (else None).
    mpp_assumed: float | None
    usable: bool
    verdict_rule: str
    verdict_reason: str
    brightfield: dict[str, Any]
    tissue_area_mm2: float
    usable_area_mm2: float
    usable_fraction: float | None
    #: Per artefact: its ``fraction`` of the tissue and artefact region and its ``area_mm2``.
    artefacts: dict[str, dict[str, float]]
    pen_colours: Any
    focus: dict[str, Any] | None
    fold_reference_od: Any
    stain: dict[str, Any]
    masks: dict[str, Any]
    thresholds: dict[str, float]
    timings_s: dict[str, float]
    wsipipe_version: str


def run(config: QcConfig, *, progress: Progress | None = None, say: Say | None = None) -> QcResult:
    """Check ``config.slide`` for out-of-focus areas, pen ink, folds, bubbles / dark debris, over- and
    under-exposure, its stain and whether it is brightfield; write qc.json (figures, verdict,
    thresholds), qc.zarr (one mask per artefact and the usable tissue) and qc.png into
    ``config.output``. A verdict of not usable is a result, not an error. The stage takes seconds
    and reports no ``progress``; it has nothing to ``say``."""
    from wsipipe.qc import qc_slide

    return qc_slide(config)
