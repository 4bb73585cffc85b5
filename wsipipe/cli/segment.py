"""``wsipipe segment``: whole-slide tumour segmentation into prediction.zarr, regions and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsipipe.cli.options import DeviceOpt, MppOverrideOpt, QcOpt, QuietOpt, SlideArg

NORMALIZE_HELP = (
    "Stain normalisation with the slide's own stain matrix: model (what the model file records it was "
    "trained with; the bundled model: none), vahadane, macenko, reinhard or none."
)


def segment(
    slide: SlideArg,
    outdir: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created if missing).", show_default=False)],
    model: Annotated[
        Optional[Path], typer.Option("--model", help="Model file (.safetensors). Default: the bundled tumour model.")
    ] = None,
    tiles: Annotated[
        Optional[Path],
        typer.Option("--tiles", help="Reuse the tissue mask and thumbnail of a 'wsipipe tile' store at the model's µm/px."),
    ] = None,
    normalize: Annotated[str, typer.Option("--normalize", help=NORMALIZE_HELP)] = "model",
    target: Annotated[
        Optional[Path], typer.Option("--target", help="Stain target image (default: the method's reference).")
    ] = None,
    overlap: Annotated[
        Optional[int], typer.Option("--overlap", help="Tile overlap in px at the model's µm/px (default: a quarter tile, as evaluate and predict use).", min=0)
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Tiles per forward pass.", min=1)] = 16,
    device: DeviceOpt = "auto",
    workers: Annotated[
        int, typer.Option("--workers", "-w", help="Tile reader processes (0: read in the main process).", min=0)
    ] = 2,
    nuclei: Annotated[
        bool,
        typer.Option(
            "--nuclei",
            help="Also find the nuclei over the tissue (classical method) and report nuclei count, density "
            "per mm² of tissue and of tumour, and cellularity (malignant nuclei area / tumour area; nuclei "
            "inside the predicted tumour count as malignant).",
        ),
    ] = False,
    nuclei_model: Annotated[
        Optional[Path],
        typer.Option("--nuclei-model", help="A US-Net nuclei model file ('bundled': the one shipped with wsipipe) instead of the classical method (implies --nuclei)."),
    ] = None,
    dicom_seg: Annotated[
        Optional[str],
        typer.Option(
            "--dicom-seg",
            help="For a DICOM slide: the DICOM Segmentation written beside prediction.zarr, 'binary' (one bit per "
            "class) or 'fractional' (probabilities 0-255), or 'none' to write no DICOM outputs. Default: binary for "
            "a DICOM slide; refused for other slides.",
            show_default=False,
        ),
    ] = None,
    mpp_override: MppOverrideOpt = None,
    qc: QcOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Segment tumour on a whole slide.

    Tiles the detected tissue at the model's µm/px with overlap, normalises stains on the device, runs the model in batches and blends the tiles seam-free.

    Writes to OUTDIR: prediction.zarr (OME-Zarr: class probabilities and label map, several levels), regions.geojson (QuPath), regions.xml (ASAP), overlay.png, report.json and report.html. A killed run resumes when the same command is run again.

    With --nuclei also nuclei.geojson (QuPath detections), nuclei.csv, labels.zarr (nuclei instances) and nuclei.json, and a per-tile cellularity heatmap in report.html.

    For a DICOM slide (a folder holding one series, or any .dcm file of it) also prediction.seg.dcm (DICOM Segmentation), regions.ann.dcm and, with --nuclei, nuclei.ann.dcm (Microscopy Bulk Simple Annotations), each referencing the slide's series.
    """
    from wsipipe.cli.annotations import warnings_on_stderr
    from wsipipe.segment import segment_slide

    def say(message: str) -> None:
        if not quiet:
            typer.echo(message, err=True)

    with warnings_on_stderr(quiet):  # regions.xml: one line for the holes ASAP cannot hold
        report = segment_slide(
            slide, outdir, model=model, tiles_store=tiles, normalize=normalize, target=target, overlap=overlap,
            batch_size=batch_size, device=device, workers=workers, mpp_override=mpp_override, nuclei=nuclei,
            nuclei_model=nuclei_model, dicom_seg=dicom_seg, qc=qc, progress=not quiet, say=say,
        )
    if report.get("message"):
        say(report["message"])
    fraction, n_tiles = report["tumour_fraction"], report["n_tiles"]
    typer.echo(
        f"{n_tiles} tile{'' if n_tiles == 1 else 's'}; tissue {report['tissue_area_mm2']:.3f} mm², tumour {report['tumour_area_mm2']:.3f} mm²"
        + (f" ({100 * fraction:.1f} % of tissue)" if fraction is not None else "")
        + (f"; {report['nuclei_count']} nuclei" if "nuclei_count" in report else "")
        + (f", cellularity {report['cellularity']:.3f}" if report.get("cellularity") is not None else "")
        + f"; outputs in {outdir}"
    )
