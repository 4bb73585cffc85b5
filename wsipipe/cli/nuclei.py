"""``wsipipe nuclei``: segment and measure nuclei in a slide or image."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from wsipipe.cli.options import BackendOpt, DeviceOpt, ModelOpt, MppOverrideOpt, QcOpt, QuietOpt, output_option


def nuclei(
    input_path: Annotated[
        Path,
        typer.Argument(
            help="Slide (SVS, NDPI, OME-TIFF, pyramidal TIFF) or image (PNG, JPEG, plain TIFF).",
            show_default=False,
        ),
    ],
    output: Annotated[Path, output_option("Output folder.")],
    classical: Annotated[
        bool,
        typer.Option("--classical", help="Haematoxylin threshold + watershed, no model (the default)."),
    ] = False,
    model: ModelOpt = None,
    tumour_mask: Annotated[
        Path | None,
        typer.Option(
            "--tumour-mask",
            help="Image covering the whole input at any resolution, non-zero = tumour; nuclei centred "
            "inside count as malignant, and cellularity is the share of it (within tissue) that nuclei cover.",
        ),
    ] = None,
    dicom: Annotated[
        bool | None,
        typer.Option(
            "--dicom/--no-dicom",
            help="Also write nuclei.ann.dcm (DICOM Microscopy Bulk Simple Annotations referencing the slide). "
            "Default: on for a DICOM input; refused for other inputs.",
            show_default=False,
        ),
    ] = None,
    mpp_override: MppOverrideOpt = None,
    backend: BackendOpt = None,
    device: DeviceOpt = "auto",
    qc: QcOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Segment every nucleus; write nuclei.geojson (QuPath detections), nuclei.csv, labels.zarr
    (OME-Zarr label image) and nuclei.json (nuclei_count, nuclei_per_mm2 of tissue and tumour,
    cellularity, per tile), all appearing together when the run ends.

    Quality control (--qc) applies to slides; plain images are not checked.
    Images without µm/px are assumed to be 40x (0.25 µm/px) with a warning; pass --mpp-override.
    """
    import logging

    from rich.console import Console
    from rich.logging import RichHandler

    from wsipipe import stages
    from wsipipe.cli.feedback import progress_bar, stage_progress

    config = stages.NucleiConfig(
        input=input_path,
        output=output,
        model=model,
        classical=classical,
        tumour_mask=tumour_mask,
        dicom=dicom,
        mpp_override=mpp_override,
        backend=backend,
        device=device,
        qc=qc,
    )
    console = Console(stderr=True)
    logger = logging.getLogger("wsipipe.nuclei")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=console, show_time=False, show_path=False))
    with stage_progress(
        None if quiet else functools.partial(progress_bar, console, transient=True), "nuclei"
    ) as progress:
        result = stages.nuclei.run(config, progress=progress)
    cellularity, density = result.cellularity, result.nuclei_per_mm2
    typer.echo(
        f"{result.nuclei_count} nuclei"
        + (f", {density:.0f} per mm² of tissue" if density is not None else "")
        + (f", cellularity {cellularity:.3f}" if cellularity is not None else "")
        + f" -> {output}"
    )
