"""The ``nuclei`` stage: every nucleus of a slide or an image into nuclei.geojson, nuclei.csv,
labels.zarr and nuclei.json (counts, densities, cellularity, per tile).

The public door to ``wsipipe.nuclei.stage``: ``run(NucleiConfig(input=..., output=...)) -> NucleiResult``,
whose fields are nuclei.json's figures (``to_json()`` is nuclei.json's content).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from wsipipe.errors import InvalidInputError
from wsipipe.stages.base import NOT_BATCH, POSITIVE, Progress, Say, StageConfig, StageResult


@dataclasses.dataclass(frozen=True, kw_only=True)
class NucleiConfig(StageConfig):
    """The nuclei of ``input`` (a slide or a plain image) into the folder ``output``.

    ``model``: a US-Net model file ('bundled': the one shipped with wsipipe); None, the classical
    method (``classical`` says so explicitly and refuses a model). ``tumour_mask``: an image covering
    the whole input, non-zero = tumour. ``dicom``: also write nuclei.ann.dcm (None: for a DICOM
    input). ``qc``: 'auto', 'off' or a ``wsipipe qc`` output (slides only).
    """

    input: Path = dataclasses.field(metadata=NOT_BATCH)
    output: Path = dataclasses.field(metadata=NOT_BATCH)
    model: Path | None = None
    classical: bool = False
    tumour_mask: Path | None = None
    dicom: bool | None = None
    mpp_override: float | None = dataclasses.field(default=None, metadata=POSITIVE)
    backend: str | None = None
    device: str = "auto"
    qc: str = "auto"

    def __post_init__(self) -> None:
        if self.model is not None:
            from wsipipe.nuclei.stage import resolve_nuclei_model

            object.__setattr__(self, "model", resolve_nuclei_model(self.model))
        super().__post_init__()

    def check(self) -> None:
        from wsipipe.qc.apply import check_qc_option

        super().check()
        if self.model is not None and self.classical:
            raise InvalidInputError("{model} and {classical}: choose one", parameter=("model", "classical"))
        check_qc_option(self.qc)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NucleiResult(StageResult):
    """nuclei.json's figures (``docs/nuclei.md`` says what each means), in its order, and the folder."""

    NOT_IN_JSON: ClassVar[tuple[str, ...]] = ("output",)

    output: Path
    input: str
    #: "classical" or "usnet:MODEL FILE NAME".
    method: str
    mpp: float
    #: The tumour mask's file, "array" (given by segment) or None.
    tumour_mask: str | None
    #: The haematoxylin stain matrix and threshold found on the input.
    calibration: dict[str, Any]
    #: The input's stain parameters for a model's normalised view (else None).
    input_stain: dict[str, Any] | None
    qc: dict[str, Any]
    nuclei_count: int
    tumour_nuclei_count: int
    tissue_mm2: float
    tumour_mm2: float
    nuclei_per_mm2: float | None
    nuclei_per_mm2_tumour: float | None
    cellularity: float | None
    #: Per core tile with tissue or nuclei: box_level0 and the figures above.
    tiles: list[dict[str, Any]]


def run(config: NucleiConfig, *, progress: Progress | None = None, say: Say | None = None) -> NucleiResult:
    """Segment the nuclei of ``config.input`` into ``config.output``, all outputs appearing together
    when the run ends. ``progress`` counts core tiles; the stage's notes (a device fallback, an image
    without µm/px) go to ``say`` (default: the ``wsipipe.nuclei`` logger's warnings)."""
    from wsipipe.nuclei.stage import run_nuclei

    return run_nuclei(config, progress=progress, say=say)
