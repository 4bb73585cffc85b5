"""The ``segment`` stage: tumour segmentation of a slide into prediction.zarr, regions, an overlay
and a report (report.json, report.html), with the nuclei stage over it when asked.

The public door to ``wsipipe.segment``: ``run(SegmentConfig(slide=..., output=...)) -> SegmentResult``,
whose fields are report.json's figures (``to_json()`` is report.json's content).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from wsipipe.errors import InvalidInputError
from wsipipe.stages.base import NOT_BATCH, POSITIVE, Progress, Say, StageConfig, StageResult, absolute_path


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegmentConfig(StageConfig):
    """Tumour segmentation of ``slide`` into the folder ``output``.

    ``model``: a model file, None for the bundled model (a loaded ``ModelBundle`` is taken too, from
    Python). ``tiles``: a ``wsipipe tile`` store at the model's µm/px whose tissue mask and tiles are
    reused. ``normalize``: one of ``wsipipe.segment.NORMALIZE_METHODS`` (``model``: what the model
    records), towards ``target`` (an image file; None: the default target). ``overlap``: None, a
    quarter tile. ``readers``: reader processes (0 reads in this process; None as many as the device
    needs, ``wsipipe.inference.engine.reader_count``). ``nuclei``: also run the nuclei stage
    (classical, or the US-Net ``nuclei_model``, which implies it) with the predicted tumour as its
    tumour mask. ``dicom_seg``: binary, fractional or none (None: binary for a DICOM slide).
    ``qc``: 'auto', 'off' or a ``wsipipe qc`` output.
    """

    slide: Path = dataclasses.field(metadata=NOT_BATCH)
    output: Path = dataclasses.field(metadata=NOT_BATCH)
    model: Path | None = None
    tiles: Path | None = dataclasses.field(default=None, metadata=NOT_BATCH)
    normalize: str = "model"
    target: Path | None = None
    overlap: int | None = None
    batch_size: int = 16
    device: str = "auto"
    readers: int | None = dataclasses.field(default=None, metadata=NOT_BATCH)
    backend: str | None = None
    mpp_override: float | None = dataclasses.field(default=None, metadata=POSITIVE)
    nuclei: bool = False
    nuclei_model: Path | None = None
    dicom_seg: str | None = dataclasses.field(default=None, metadata=NOT_BATCH)
    qc: str = "auto"

    def __post_init__(self) -> None:
        if self.nuclei_model is not None:
            from wsipipe.nuclei.stage import resolve_nuclei_model

            object.__setattr__(self, "nuclei_model", resolve_nuclei_model(self.nuclei_model))
            object.__setattr__(self, "nuclei", True)
        super().__post_init__()

    def check(self) -> None:
        from wsipipe.files import check_regular_file
        from wsipipe.qc.apply import check_qc_option
        from wsipipe.segment import NORMALIZE_METHODS

        super().check()
        if self.normalize not in NORMALIZE_METHODS:
            raise InvalidInputError(
                f"{{normalize}} {self.normalize!r}: choose one of {', '.join(NORMALIZE_METHODS)}", parameter="normalize"
            )
        if self.batch_size < 1:
            raise InvalidInputError(f"{{batch_size}} must be at least 1, got {self.batch_size}", parameter="batch_size")
        if self.readers is not None and self.readers < 0:
            raise InvalidInputError(f"{{readers}} must be at least 0, got {self.readers}", parameter="readers")
        check_qc_option(self.qc)
        if self.target is not None:  # an image file; a FIFO would block cv2.imread for ever
            check_regular_file(self.target, InvalidInputError)
        if self.nuclei_model is not None:
            from wsipipe.nuclei.stage import check_nuclei_model

            check_nuclei_model(self.nuclei_model)  # before hours of segmentation, not after

    @classmethod
    def batch_options(cls) -> dict[str, Any]:
        """The fields' converters, with ``qc``'s path made absolute for the workers."""
        return {**super().batch_options(), "qc": _qc_option}


def _qc_option(value: Any) -> str:
    """``qc`` as a batch option: auto, off, or a qc output (made absolute, for the workers)."""
    text = str(value)
    return text if text in ("auto", "off") else str(absolute_path(text))


#: report.json's keys that only a run with the nuclei has.
NUCLEI_KEYS = (
    "nuclei_method",
    "nuclei_count",
    "tumour_nuclei_count",
    "nuclei_tissue_mm2",
    "nuclei_tumour_mm2",
    "nuclei_per_mm2",
    "nuclei_per_mm2_tumour",
    "cellularity",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegmentResult(StageResult):
    """report.json's figures (``docs/segment.md`` says what each means), in its order, and the folder.

    The nuclei figures are None (and not in ``to_json()``) when the nuclei did not run; ``message``
    is None unless no tissue was found.
    """

    NOT_IN_JSON: ClassVar[tuple[str, ...]] = ("output",)

    output: Path
    slide: str
    mpp: float
    #: name, sha256, architecture, mpp, tile_size, classes, trained_on.
    model: dict[str, Any]
    #: date and command.
    run: dict[str, str]
    dimensions: list[int]
    tissue_area_mm2: float
    #: What quality control left out ({"mode": "off"} when it did not run).
    qc: dict[str, Any]
    tumour_area_mm2: float
    tumour_fraction: float | None
    nuclei_method: str | None = None
    nuclei_count: int | None = None
    tumour_nuclei_count: int | None = None
    nuclei_tissue_mm2: float | None = None
    nuclei_tumour_mm2: float | None = None
    nuclei_per_mm2: float | None = None
    nuclei_per_mm2_tumour: float | None = None
    cellularity: float | None = None
    class_areas_mm2: dict[str, float]
    n_tiles: int
    n_regions: dict[str, int]
    regions_area_mm2: dict[str, float]
    regions: dict[str, float]
    normalize: str
    device: str
    overlap_px: int
    prediction_shape: list[int]
    timings_s: dict[str, float]
    #: Tiles this run ran (fewer than ``n_tiles`` when a killed run was resumed).
    n_tiles_run: int
    tiles_per_s: dict[str, float | None]
    outputs: list[str]
    wsipipe_version: str
    message: str | None = None

    @property
    def nuclei_ran(self) -> bool:
        return self.nuclei_count is not None

    def to_json(self) -> dict[str, Any]:
        """report.json: the nuclei keys only when the nuclei ran, ``message`` only when there is one."""
        left_out = ({"message"} if self.message is None else set()) | (set() if self.nuclei_ran else set(NUCLEI_KEYS))
        return {key: value for key, value in super().to_json().items() if key not in left_out}

    @classmethod
    def from_json(cls, report: dict[str, Any], output: str | Path) -> SegmentResult:
        """The result a report.json in ``output`` holds."""
        return cls(output=Path(output), **report)


def run(config: SegmentConfig, *, progress: Progress | None = None, say: Say | None = None) -> SegmentResult:
    """Segment ``config.slide`` into ``config.output`` (prediction.zarr, regions.geojson, regions.xml,
    overlay.png, report.json, report.html; nuclei.* and labels.zarr with ``nuclei``). A killed run
    resumes when run again with the same config. ``progress`` counts tiles (the segmentation's, then
    the nuclei stage's); ``say`` gets the notes (the device, a store reused)."""
    from wsipipe.segment import segment_slide

    return segment_slide(config, progress=progress, say=say)
