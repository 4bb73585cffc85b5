"""Option types shared by several commands, so each option is spelled and documented once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

SlideArg = Annotated[
    Path,
    typer.Argument(
        help="Slide file (SVS, NDPI, OME-TIFF, pyramidal TIFF), or a DICOM WSI: a folder holding one series or any .dcm file of it.",
        show_default=False,
    ),
]
BackendOpt = Annotated[
    Optional[str],
    typer.Option(
        "--backend",
        help="Slide reader: 'openslide', 'tiffslide' or (DICOM only) 'wsidicom'. Default: openslide, then "
        "tiffslide (DICOM: wsidicom) if it fails.",
    ),
]
MppOverrideOpt = Annotated[
    Optional[float],
    typer.Option(
        "--mpp-override",
        help="µm per pixel at level 0, for slides whose metadata lacks it.",
        min=1e-6,
    ),
]
WorkersOpt = Annotated[
    int, typer.Option("--workers", "-w", help="Parallel reader threads (one slide handle each).", min=1)
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing output instead of resuming it.")
]
QcOpt = Annotated[
    str,
    typer.Option(
        "--qc",
        help="Slide quality control: 'auto' runs it (seconds) and leaves out-of-focus, pen, fold, bubble and "
        "badly exposed areas out; a path reuses a `wsipipe qc` output folder or its qc.zarr; 'off' skips "
        "it. A slide that is not brightfield H&E is refused (exit 2) unless 'off'.",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA if available, else CPU), cpu or cuda."),
]
StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Refuse a bad annotation (exit 2) instead of skipping or repairing it with a warning, "
        "and a label map that matches no annotation.",
    ),
]
LabelMapOpt = Annotated[
    Optional[str],
    typer.Option(
        "--label-map",
        help="Mask value per annotation label, in priority order (later entries win where labels "
        "overlap; value 0 cuts holes): 'Tumor=1,Exclusion=0', or a file (JSON object or name=value "
        "lines). Default: each label 1, 2, ... in file order; Exclusion and CAMELYON '_2' are 0.",
    ),
]
