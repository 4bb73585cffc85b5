"""``wsipipe annotations``: convert annotation files and rasterise them into slide masks."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from wsipipe.cli.feedback import warnings_on_stderr
from wsipipe.cli.options import (
    BackendOpt,
    LabelMapOpt,
    MppOverrideOpt,
    OverwriteOpt,
    QuietOpt,
    StrictOpt,
    output_option,
)
from wsipipe.errors import InvalidInputError, OutputError
from wsipipe.files import atomic_path, check_output_folder

app = typer.Typer(
    help="Annotations: read ASAP XML, Aperio ImageScope XML and QuPath GeoJSON (format detected "
    "from the content), convert between them, and burn them into label masks.",
    no_args_is_help=True,
)

InputArg = Annotated[
    Path, typer.Argument(help="Annotation file: ASAP XML, Aperio ImageScope XML or GeoJSON.", show_default=False)
]
MASK_SUFFIXES = (".png", ".zarr")
MAX_MASK_PIXELS = 1 << 30  # a coarser --mpp is needed beyond this


@contextmanager
def _status(message: str, quiet: bool):
    """A spinner on stderr while a file is read or written (large files take seconds); none in a
    log (stderr not a terminal), where it would leave a blank line."""
    from rich.console import Console

    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield
        return
    with console.status(message):
        yield


def _check_output(source: Path, output: Path, overwrite: bool) -> None:
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise InvalidInputError(f"{output}: the output would replace the input; choose another name")
    if output.exists() and not overwrite:
        raise InvalidInputError(f"{output} already exists; pass --overwrite to replace it")
    check_output_folder(output, parameter=None)


@app.command("convert")
def convert(
    source: InputArg,
    output: Annotated[
        Path, typer.Argument(help="Output file: .geojson/.json (QuPath) or .xml (ASAP).", show_default=False)
    ],
    to: Annotated[
        str | None, typer.Option("--to", help="Output format, geojson or asap (default: from OUT's extension).")
    ] = None,
    strict: StrictOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert an annotation file to GeoJSON (opens in QuPath) or ASAP XML (opens in ASAP)."""
    from wsipipe.annotations.io import output_format, read_annotations, write_annotations

    fmt = output_format(output, to)
    _check_output(source, output, overwrite)
    with warnings_on_stderr(quiet):
        with _status(f"reading {source.name}", quiet):
            annotations = read_annotations(source, strict=strict)
        with _status(f"writing {output.name}", quiet):
            write_annotations(annotations, output, fmt)
    typer.echo(f"{output}: {len(annotations)} annotations from {annotations.format} written as {fmt}")


@app.command("mask")
def mask(
    source: InputArg,
    slide: Annotated[
        Path, typer.Option("--slide", help="The slide the annotations were drawn on (gives size and µm/px).")
    ],
    mpp: Annotated[float, typer.Option("--mpp", help="µm per pixel of the mask (e.g. 8).", min=1e-6)],
    output: Annotated[Path, output_option("Mask file: .png or .zarr.")],
    label_map: LabelMapOpt = None,
    strict: StrictOpt = False,
    backend: BackendOpt = None,
    mpp_override: MppOverrideOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Burn the annotations into a uint8 label mask of the whole slide at --mpp µm/px.

    Overlaps follow the label map's order; annotations outside the slide are clipped with a warning.
    """
    from rich.console import Console
    from rich.progress import Progress

    from wsipipe.annotations import TileRasteriser, parse_label_map, read_annotations
    from wsipipe.slide import open_slide

    if output.suffix.lower() not in MASK_SUFFIXES:
        raise InvalidInputError(f"-o {output}: the mask must be a .png or .zarr file")
    _check_output(source, output, overwrite)
    labels = parse_label_map(label_map) if label_map is not None else None
    with warnings_on_stderr(quiet):
        with _status(f"reading {source.name}", quiet):
            annotations = read_annotations(source, strict=strict)
        with open_slide(slide, backend=backend, mpp_override=mpp_override) as reader:
            width, height = reader.dimensions
            if reader.mpp_x is None and annotations.mpp:
                logging.getLogger("wsipipe.annotations").warning(
                    "%s records no µm/px; using the annotation file's MicronsPerPixel %g", slide, annotations.mpp
                )
            base_mpp = reader.mpp_x or annotations.mpp or reader.mpp  # the last raises, naming --mpp-override
        if mpp < base_mpp * 0.99:
            raise InvalidInputError(f"--mpp {mpp} is finer than the slide's level 0 ({base_mpp:.4g} µm/px)")
        out_width, out_height = max(1, round(width * base_mpp / mpp)), max(1, round(height * base_mpp / mpp))
        if out_width * out_height > MAX_MASK_PIXELS:
            raise InvalidInputError(f"--mpp {mpp} gives a {out_width} x {out_height} mask; choose a coarser --mpp")
        annotations.clip_to(width, height, strict=strict)
        rasteriser = TileRasteriser(annotations, labels, strict=strict)
    console = Console(stderr=True)
    with Progress(console=console, disable=quiet or not console.is_terminal, transient=True) as progress:
        task = progress.add_task("rasterising", total=out_height)
        result = rasteriser.slide_mask(
            width, height, out_width, out_height, on_rows=lambda n: progress.advance(task, n)
        )
    _write_mask(
        result,
        output,
        {
            "mpp": mpp,
            "label_map": rasteriser.label_map.to_dict(),
            "annotations": str(source),
            "slide": str(slide),
            "slide_size": [width, height],
        },
    )
    fractions = rasteriser.label_fractions(result)
    labels_burned = zip(rasteriser.label_map.names, rasteriser.label_map.values, fractions)
    summary = ", ".join(f"{n}={v}: {f:.2%}" for n, v, f in labels_burned if v) or "no labels"
    typer.echo(f"{output}: {out_width} x {out_height} mask at {mpp:g} µm/px; {summary}")


def _write_mask(result, output: Path, attrs: dict) -> None:
    """PNG or zarr through a temporary name in the output folder, renamed when complete."""
    try:
        with atomic_path(output) as temporary:
            if output.suffix.lower() == ".png":
                from PIL import Image

                Image.fromarray(result).save(temporary, format="PNG")
            else:
                import zarr

                group = zarr.open_group(str(temporary), mode="w")
                array = group.create_array("mask", shape=result.shape, chunks=(1024, 1024), dtype="uint8")
                array[:] = result
                group.attrs.update({"wsipipe": "annotation-mask", **attrs})
    except OSError as exc:
        raise OutputError(f"{output}: cannot write: {exc.strerror or exc}") from None
