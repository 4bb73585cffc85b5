"""``wsipipe segment``: whole-slide tumour segmentation into prediction.zarr, regions and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsipipe.cli.options import (
    BackendOpt,
    BatchSizeOpt,
    DeviceOpt,
    ModelOpt,
    MppOverrideOpt,
    NormalizeOpt,
    NucleiModelOpt,
    NucleiOpt,
    OverlapOpt,
    QcOpt,
    QuietOpt,
    ReadersOpt,
    SlideArg,
    TargetOpt,
    output_option,
)


def segment(
    slide: SlideArg,
    outdir: Annotated[Path, output_option("Output folder (created if missing).")],
    model: ModelOpt = None,
    tiles: Annotated[
        Path | None,
        typer.Option(
            "--tiles", help="Reuse the tissue mask and thumbnail of a 'wsipipe tile' store at the model's µm/px."
        ),
    ] = None,
    normalize: NormalizeOpt = "model",
    target: TargetOpt = None,
    overlap: OverlapOpt = None,
    batch_size: BatchSizeOpt = 16,
    device: DeviceOpt = "auto",
    readers: ReadersOpt = 2,
    nuclei: NucleiOpt = False,
    nuclei_model: NucleiModelOpt = None,
    dicom_seg: Annotated[
        str | None,
        typer.Option(
            "--dicom-seg",
            help="For a DICOM slide: the DICOM Segmentation written beside prediction.zarr, 'binary' (one bit per "
            "class) or 'fractional' (probabilities 0-255), or 'none' to write no DICOM outputs. Default: binary for "
            "a DICOM slide; refused for other slides.",
            show_default=False,
        ),
    ] = None,
    backend: BackendOpt = None,
    mpp_override: MppOverrideOpt = None,
    qc: QcOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Segment tumour on a whole slide.

    Tiles the detected tissue at the model's µm/px with overlap, normalises stains on the device, runs the model in batches and blends the tiles seam-free.

    Writes to the output folder: prediction.zarr (OME-Zarr: class probabilities and label map, several levels), regions.geojson (QuPath), regions.xml (ASAP), overlay.png, report.json and report.html. A killed run resumes when the same command is run again.

    With --nuclei also nuclei.geojson (QuPath detections), nuclei.csv, labels.zarr (nuclei instances) and nuclei.json, and a per-tile cellularity heatmap in report.html.

    For a DICOM slide (a folder holding one series, or any .dcm file of it) also prediction.seg.dcm (DICOM Segmentation), regions.ann.dcm and, with --nuclei, nuclei.ann.dcm (Microscopy Bulk Simple Annotations), each referencing the slide's series.
    """
    from wsipipe import stages
    from wsipipe.cli.feedback import progress_bar, stage_progress, warnings_on_stderr

    def say(message: str) -> None:
        if not quiet:
            typer.echo(message, err=True)

    config = stages.SegmentConfig(
        slide=slide,
        output=outdir,
        model=model,
        tiles=tiles,
        normalize=normalize,
        target=target,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        readers=readers,
        backend=backend,
        mpp_override=mpp_override,
        nuclei=nuclei,
        nuclei_model=nuclei_model,
        dicom_seg=dicom_seg,
        qc=qc,
    )
    # regions.xml: one line for the holes ASAP cannot hold
    with (
        warnings_on_stderr(quiet),
        stage_progress(None if quiet else lambda: progress_bar(transient=True), "tiles") as progress,
    ):
        result = stages.segment.run(config, progress=progress, say=say)
    if result.message:
        say(result.message)
    fraction, n_tiles = result.tumour_fraction, result.n_tiles
    typer.echo(
        f"{n_tiles} tile{'' if n_tiles == 1 else 's'}; tissue {result.tissue_area_mm2:.3f} mm², tumour {result.tumour_area_mm2:.3f} mm²"
        + (f" ({100 * fraction:.1f} % of tissue)" if fraction is not None else "")
        + (f"; {result.nuclei_count} nuclei" if result.nuclei_count is not None else "")
        + (f", cellularity {result.cellularity:.3f}" if result.cellularity is not None else "")
        + f"; outputs in {outdir}"
    )
