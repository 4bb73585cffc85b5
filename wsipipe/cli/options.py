"""Option types shared by several commands, so each option is spelled and documented once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

SlideArg = Annotated[
    Path, typer.Argument(help="Slide file (SVS, NDPI, OME-TIFF, pyramidal TIFF).", show_default=False)
]
BackendOpt = Annotated[
    Optional[str],
    typer.Option(
        "--backend",
        help="Slide reader: 'openslide' or 'tiffslide'. Default: openslide, tiffslide if it fails.",
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
    int, typer.Option("--workers", "-w", help="Parallel worker processes.", min=1)
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing output instead of resuming it.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA if available, else CPU), cpu or cuda."),
]
