"""``wsipipe info``: what a slide holds."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from wsipipe.cli.options import BackendOpt, MppOverrideOpt, SlideArg


def info(
    slide: SlideArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    backend: BackendOpt = None,
    mpp_override: MppOverrideOpt = None,
) -> None:
    """Print a slide's size, pyramid levels, µm/px, objective power and associated images."""
    from rich.console import Console
    from rich.table import Table

    from wsipipe.slide import open_slide

    with open_slide(slide, backend=backend, mpp_override=mpp_override) as reader:
        meta = reader.info()
    if as_json:
        typer.echo(json.dumps(meta))
        return
    console = Console()
    console.print(f"[bold]{meta['path']}[/bold]  vendor={meta['vendor']}  backend={meta['backend']}")
    mpp = "unknown" if meta["mpp_x"] is None else f"{meta['mpp_x']:.4g} x {meta['mpp_y']:.4g}"
    power = "unknown" if meta["objective_power"] is None else f"{meta['objective_power']:g}x"
    console.print(f"size {meta['width']} x {meta['height']} px, µm/px {mpp}, objective {power}")
    table = Table("level", "width", "height", "downsample", "µm/px")
    for index, lvl in enumerate(meta["levels"]):
        level_mpp = "-" if meta["mpp_x"] is None else f"{meta['mpp_x'] * lvl['downsample']:.4g}"
        table.add_row(str(index), str(lvl["width"]), str(lvl["height"]), f"{lvl['downsample']:.4g}", level_mpp)
    console.print(table)
    console.print(f"associated images: {', '.join(meta['associated_images']) or 'none'}")
