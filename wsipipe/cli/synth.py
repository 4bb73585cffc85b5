"""``wsipipe synth``: write a synthetic whole-slide image for scale tests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsipipe.cli.options import OverwriteOpt, QuietOpt


def synth(
    out: Annotated[Path, typer.Argument(help="Output TIFF (e.g. slide.tif).", show_default=False)],
    width: Annotated[int, typer.Option("--width", help="Level-0 width in pixels.", min=1)],
    height: Annotated[int, typer.Option("--height", help="Level-0 height in pixels.", min=1)],
    mpp: Annotated[float, typer.Option("--mpp", help="µm per pixel at level 0.", min=1e-6)] = 0.25,
    tile_size: Annotated[int, typer.Option("--tile-size", help="TIFF tile side (multiple of 16).")] = 512,
    levels: Annotated[
        str, typer.Option("--levels", help="Pyramid levels (2x each), or 'auto': halve until ~2k px.")
    ] = "auto",
    quality: Annotated[int, typer.Option("--quality", help="JPEG quality 1-100.")] = 90,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same slide.")] = 0,
    source: Annotated[
        list[Path] | None,
        typer.Option(
            "--source",
            help="H&E image(s) to take pixels from (PNG, JPEG, SVS/TIFF level 0); repeatable. "
            "Default: the bundled examples/data/CMU-1-Small-Region.svs.",
        ),
    ] = None,
    ndpi: Annotated[
        bool, typer.Option("--ndpi", help="Write a Hamamatsu NDPI-flavoured file (one JPEG per level).")
    ] = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a pyramidal JPEG-tiled TIFF of any size from real H&E pixels, in constant memory.

    Tissue-shaped regions on white glass, patches varied by flips, rotations and colour jitter;
    deterministic for a seed; µm/px readable by openslide and tiffslide.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from wsipipe.errors import InvalidInputError, OutputError
    from wsipipe.slide.synthetic import SyntheticSpec, total_tiles, write_synthetic_slide

    if levels == "auto":
        level_count = None
    else:
        try:
            level_count = int(levels)
        except ValueError:
            raise InvalidInputError(f"--levels must be a number or 'auto', got {levels!r}") from None
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists (pass --overwrite to replace it)")
    spec = SyntheticSpec(
        width=width,
        height=height,
        mpp=mpp,
        tile_size=tile_size,
        levels=level_count,
        quality=quality,
        seed=seed,
        sources=tuple(source or ()),
    )
    spec.validate()
    with Progress(
        TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=quiet, transient=False
    ) as bar:
        task = bar.add_task("tiles", total=total_tiles(spec))
        write_synthetic_slide(out, spec, ndpi=ndpi, progress=lambda n: bar.advance(task, n))
    if not quiet:
        typer.echo(f"wrote {out} ({width} x {height} px, {spec.level_count()} levels, {mpp:g} µm/px)", err=True)
