"""``wsipipe normalize``: stain-normalise a tile store."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from wsipipe.cli.options import DeviceOpt, OverwriteOpt, QuietOpt, TargetOpt, output_option


def normalize(
    store: Annotated[Path, typer.Argument(help="Tile store (.zarr) made by `wsipipe tile`.", show_default=False)],
    output: Annotated[Path, output_option("Normalised tile store to write (.zarr).")],
    method: Annotated[str, typer.Option("--method", "-m", help="vahadane, macenko or reinhard.")] = "vahadane",
    target: TargetOpt = None,
    device: DeviceOpt = "auto",
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the pixel sampling (results are deterministic per seed).")
    ] = 0,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Normalise the stain colours of every tile onto a target, into a new tile store.

    The slide's stain matrix and concentrations are estimated once, from tiles sampled across the
    whole store, and reused for every tile; they are recorded in the output's attributes. Same
    coordinates and provenance as the input; an interrupted run resumes. A store that is already
    normalised is refused unless --overwrite (which also replaces an existing output).
    """
    from rich.console import Console

    from wsipipe import stages
    from wsipipe.cli.feedback import progress_bar, stage_progress, warnings_as_lines

    config = stages.NormalizeConfig(
        input=store, output=output, method=method, target=target, device=device, seed=seed, overwrite=overwrite
    )
    console = Console(stderr=True, quiet=quiet)

    with (
        warnings_as_lines(),
        stage_progress(None if quiet else functools.partial(progress_bar, console), "normalize") as progress,
    ):
        result = stages.normalize.run(config, progress=progress, say=console.print)
    if not quiet:
        console.print(f"{result.n_tiles} tiles normalised ({result.method}, {result.device}) -> {result.output}")
