"""``wsipipe tile``: a slide into a zarr tile store of its tissue tiles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsipipe.cli.options import (
    BackendOpt,
    LabelMapOpt,
    MppOverrideOpt,
    OverwriteOpt,
    QcOpt,
    QuietOpt,
    ReadersOpt,
    SlideArg,
    StrictOpt,
    TileOverlapOpt,
    output_option,
)


def tile(
    slide: SlideArg,
    output: Annotated[Path, output_option("Tile store to write (a .zarr directory).")],
    mpp: Annotated[float, typer.Option("--mpp", help="Tile scale in µm per pixel (ignored with --level).")] = 0.5,
    level: Annotated[
        int | None, typer.Option("--level", help="Tile at this pyramid level's own scale instead of --mpp.", min=0)
    ] = None,
    tile_size: Annotated[
        int, typer.Option("--tile-size", help="Tile width and height in pixels at the tile scale.")
    ] = 512,
    overlap: TileOverlapOpt = 0,
    tissue_threshold: Annotated[
        float, typer.Option("--tissue-threshold", help="Minimum tissue fraction for a tile to be kept (0 keeps all).")
    ] = 0.1,
    annotations: Annotated[
        Path | None,
        typer.Option(
            "--annotations",
            help="ASAP XML, Aperio XML or GeoJSON drawn on SLIDE: adds a label mask per "
            "tile (masks) and per-tile label fractions to the store, for training.",
            show_default=False,
        ),
    ] = None,
    label_map: LabelMapOpt = None,
    strict: StrictOpt = False,
    backend: BackendOpt = None,
    mpp_override: MppOverrideOpt = None,
    readers: ReadersOpt = 2,
    overwrite: OverwriteOpt = False,
    qc: QcOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Detect tissue and write every tissue tile of SLIDE into a zarr v3 tile store.

    Run the same command again after an interruption (Ctrl-C, kill) to resume; a complete store is left as it is unless --overwrite.
    """
    from wsipipe import stages
    from wsipipe.cli.feedback import progress_bar, stage_progress, warnings_on_stderr

    config = stages.TileConfig(
        slide=slide,
        output=output,
        mpp=mpp,
        level=level,
        tile_size=tile_size,
        overlap=overlap,
        tissue_threshold=tissue_threshold,
        annotations=annotations,
        label_map=label_map,
        strict=strict,
        backend=backend,
        mpp_override=mpp_override,
        readers=readers,
        overwrite=overwrite,
        qc=qc,
    )
    with (
        warnings_on_stderr(quiet),
        stage_progress(None if quiet else lambda: progress_bar(rate="tiles", keep_in_log=True), "tiling") as progress,
    ):
        result = stages.tile.run(config, progress=progress)
    if result.already_complete:
        typer.echo(
            f"{result.output} is already complete ({result.n_tiles} tiles, same parameters); nothing to do (use --overwrite to redo it)"
        )
        return
    rate = result.n_written / result.seconds if result.seconds > 0 else 0.0
    typer.echo(
        f"wrote {result.n_tiles} tiles to {result.output} ({result.n_written} this run, {result.seconds:.1f} s, {rate:.1f} tiles/s)"
    )
