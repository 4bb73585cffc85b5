"""``wsipipe normalize``: stain-normalise a tile store."""

from __future__ import annotations

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
    seed: Annotated[int, typer.Option("--seed", help="Seed of the pixel sampling (results are deterministic per seed).")] = 0,
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from wsipipe.device import resolve_device
    from wsipipe.stain import get_normalizer
    from wsipipe.stain.store_stage import normalize_store

    console = Console(stderr=True, quiet=quiet)
    get_normalizer(method)  # a bad --method fails before any work
    torch_device = resolve_device(device, notify=lambda message: console.print(message))
    with Progress(
        TextColumn("normalize"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=quiet or not console.is_terminal,  # no blank line in a log
    ) as progress:
        tasks = []  # the bar appears once the work starts, not before a refusal

        def on_progress(done: int, total: int) -> None:
            if not tasks:
                tasks.append(progress.add_task("tiles", total=total))
            progress.update(tasks[0], completed=done, total=total)

        result = normalize_store(
            store,
            output,
            method=method,
            target_image=target,
            device=torch_device,
            seed=seed,
            overwrite=overwrite,
            on_progress=on_progress,
            on_warning=lambda message: typer.echo(f"Warning: {message}", err=True),
        )
    if not quiet:
        console.print(f"{result.n_tiles} tiles normalised ({method}, {torch_device}) -> {result.path}")
