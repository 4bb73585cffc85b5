"""The per-slide job interface, the registry of named jobs, and the ``info`` job.

A job is a plain importable function ``job(slide_path: Path, workdir: Path, options: dict) ->
dict`` that writes its outputs into ``workdir`` (a fresh temporary folder the engine renames into
place when the job returns) and returns the slide's figures (JSON scalars: numbers, text, None).
It raises on failure; ``SkipSlide`` says the slide was deliberately not processed. Jobs are named
by an import reference (``module:function``), so workers import them by name and nothing but the
reference, the slide's path and its options travels to a worker.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsipipe.errors import InvalidInputError, ModelError
from wsipipe.stages import QcConfig, SegmentConfig
from wsipipe.stages.base import absolute_path

# Longest side of the thumbnail info_job writes, in pixels.
THUMBNAIL_MAX_SIDE = 512
# Level-0 regions info_job decodes (a grid over the slide) to catch corrupt or truncated tiles.
SAMPLE_GRID = 3
SAMPLE_SIZE = 256

_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class SkipSlide(Exception):
    """Raised by a job for a slide it deliberately leaves out; the message says why."""


@dataclass(frozen=True)
class JobSpec:
    """A job and the per-slide options it accepts (name -> converter from manifest text).

    ``options`` None: any option is passed through as text (a user's own ``module:function``).
    """

    name: str
    ref: str
    options: dict[str, Callable[[str], Any]] | None
    #: Option whose value says where the job runs ('cpu', 'cuda', 'auto'); None: CPU only.
    device_option: str | None = None
    #: Checks and completes the batch-wide options once, before any slide runs (e.g. the model).
    prepare: Callable[[dict], dict] | None = None

    def convert_options(self, raw: dict[str, Any], where: str) -> dict[str, Any]:
        """Options with manifest text converted; unknown names are a usage error naming ``where``."""
        if self.options is None:
            return dict(raw)
        converted = {}
        for key, value in raw.items():
            if key not in self.options:
                accepted = ", ".join(sorted(self.options)) or "none"
                raise InvalidInputError(f"{where}: job {self.name!r} takes no option {key!r} (accepted: {accepted})")
            try:
                converted[key] = self.options[key](value)
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"{where}: option {key}={value!r}: {exc}") from exc
        return converted


def _prepare_segment(options: dict) -> dict:
    """Fail once, up front, on options that would fail every slide: the config's own checks (on a
    stand-in slide and output, which are each slide's), and the model file's header."""
    from wsipipe.models.io import read_metadata
    from wsipipe.segment import BUNDLED_MODEL

    options = dict(options)
    options["model"] = absolute_path(options.get("model") or BUNDLED_MODEL)
    if not options["model"].is_file():
        raise ModelError(f"{{model}} {options['model']}: no such model file", parameter="model")
    read_metadata(options["model"])  # a pickle or another tool's file, refused once (header only)
    config = SegmentConfig(slide=Path(), output=Path(), **options)
    if config.nuclei_model is not None:
        options["nuclei_model"] = absolute_path(config.nuclei_model)  # 'bundled' resolved
    return options


#: Figures of a segment report that go into the batch summary.
SEGMENT_FIGURES = ("tumour_fraction", "tissue_area_mm2", "tumour_area_mm2", "n_tiles", "mpp")
#: Figures the report has when the nuclei ran (``nuclei`` or ``nuclei_model``); summarised as well.
NUCLEI_FIGURES = ("nuclei_count", "nuclei_per_mm2", "nuclei_per_mm2_tumour", "cellularity")
#: A segment report's quality-control record, as summary columns (named as the qc job's).
SEGMENT_QC_FIGURES = {"qc_usable": "usable", "qc_rule": "verdict_rule", "qc_left_out_fraction": "left_out_fraction"}

JOBS: dict[str, JobSpec] = {
    "segment": JobSpec(
        "segment",
        "wsipipe.batch.jobs:segment_job",
        SegmentConfig.batch_options(),
        device_option="device",
        prepare=_prepare_segment,
    ),
    # how the slide is opened, which is all qc's options are
    "info": JobSpec("info", "wsipipe.batch.jobs:info_job", QcConfig.batch_options()),
    "qc": JobSpec("qc", "wsipipe.batch.jobs:qc_job", QcConfig.batch_options()),
}


def job_spec(name_or_ref: str) -> JobSpec:
    """A registered job by name, or a user's job given as ``package.module:function``."""
    if name_or_ref in JOBS:
        return JOBS[name_or_ref]
    if _REF.match(name_or_ref):
        load_job(name_or_ref)  # fail now, in the caller, rather than once per slide on the workers
        return JobSpec(name_or_ref, name_or_ref, None)
    raise InvalidInputError(
        f"{{job}} {name_or_ref!r}: choose one of {', '.join(JOBS)} or give a function as module:function",
        parameter="job",
    )


def load_job(ref: str) -> Callable[[Path, Path, dict], dict]:
    """Import the job function named by ``module:function``."""
    module_name, func_name = ref.split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise InvalidInputError(f"{{job}} {ref}: cannot import it ({exc})", parameter="job") from exc
    if not callable(func):
        raise InvalidInputError(f"{{job}} {ref}: not a function", parameter="job")
    return func


def segment_job(slide_path: Path, workdir: Path, options: dict) -> dict:
    """``wsipipe segment`` on one slide (outputs: prediction.zarr, regions, overlay, report.*; nuclei.*
    and labels.zarr with the nuclei options).

    Tiles are read in the worker process itself (``readers=0``): the batch is parallel by slide.
    """
    from wsipipe.errors import NotBrightfieldHEError
    from wsipipe.stages import segment

    stage = {name: options[name] for name in SegmentConfig.batch_options() if name in options}
    try:
        result = segment.run(SegmentConfig(slide=slide_path, output=workdir, readers=0, **stage))
    except NotBrightfieldHEError as exc:  # QC's verdict, not a failure: the slide is left out, saying why
        raise SkipSlide(str(exc)) from exc  # the cause names its parameter as the caller spells it
    names = SEGMENT_FIGURES + (NUCLEI_FIGURES if result.nuclei_ran else ())
    return {
        **{name: getattr(result, name) for name in names},
        **{column: result.qc.get(key) for column, key in SEGMENT_QC_FIGURES.items() if result.qc.get("mode") != "off"},
    }


def qc_job(slide_path: Path, workdir: Path, options: dict) -> dict:
    """``wsipipe qc`` on one slide (outputs: qc.json, qc.zarr, qc.png); figures: the ``qc_*`` columns."""
    from wsipipe.qc import qc_columns
    from wsipipe.stages import qc

    stage = {name: options[name] for name in QcConfig.batch_options() if name in options}
    return qc_columns(qc.run(QcConfig(slide=slide_path, output=workdir, **stage)).to_json())


def info_job(slide_path: Path, workdir: Path, options: dict) -> dict:
    """Open the slide, decode a thumbnail and a grid of level-0 regions; write info.json + thumbnail.png.

    The cheapest job that still catches corrupt and truncated slides, since it touches every
    pyramid level it reads from and spots spread over level 0. The tissue fraction is
    ``wsipipe.tissue``'s detector on the thumbnail, the one tiling and segment use.
    """
    import cv2
    import numpy as np

    from wsipipe.slide import open_slide
    from wsipipe.tissue import detect_tissue, read_thumbnail

    with open_slide(slide_path, backend=options.get("backend"), mpp_override=options.get("mpp_override")) as reader:
        meta = reader.info()
        width, height = reader.dimensions
        shrink = max(1.0, max(width, height) / THUMBNAIL_MAX_SIDE)
        thumbnail = read_thumbnail(reader, shrink)
        for gy in range(SAMPLE_GRID):
            for gx in range(SAMPLE_GRID):
                x = round((gx + 0.5) * width / SAMPLE_GRID - SAMPLE_SIZE / 2)
                y = round((gy + 0.5) * height / SAMPLE_GRID - SAMPLE_SIZE / 2)
                reader.read_region((max(x, 0), max(y, 0)), 0, (SAMPLE_SIZE, SAMPLE_SIZE))
    fraction = float(detect_tissue(thumbnail, meta["mpp_x"] and meta["mpp_x"] * shrink).mean())
    meta["tissue_fraction"] = fraction
    meta["annotation"] = options.get("annotation")
    (workdir / "info.json").write_text(json.dumps(meta, indent=2))
    if not cv2.imwrite(str(workdir / "thumbnail.png"), np.ascontiguousarray(thumbnail[..., ::-1])):
        raise OSError(f"{workdir / 'thumbnail.png'}: could not be written")
    return {
        "width": width,
        "height": height,
        "levels": len(meta["levels"]),
        "mpp": meta["mpp_x"],
        "tissue_fraction": round(fraction, 4),
    }
