"""``wsipipe models``: the architectures wsipipe can train, and what a model file holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="List architectures and inspect model files.", no_args_is_help=True)


@app.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print each architecture's name, parameter count (2 classes, default arguments) and summary."""
    from rich.console import Console
    from rich.table import Table

    from wsipipe.models import ARCHITECTURES, parameter_count

    rows = [(a.name, parameter_count(a.name), a.defaults, a.description) for a in ARCHITECTURES.values()]
    rows.append(("msf-unet", parameter_count("msf-unet", args={"blocks": 4}), {"blocks": 4}, "4 blocks"))
    if as_json:
        typer.echo(json.dumps([{"name": n, "parameters": p, "args": a} for n, p, a, _ in rows]))
        return
    table = Table("name", "parameters", "arguments", "description")
    for name, params, args, description in rows:
        table.add_row(name, f"{params / 1e6:.2f} M", json.dumps(args), description)
    Console().print(table)


@app.command("info")
def info(
    model: Annotated[Path, typer.Argument(help="Model file (.safetensors written by wsipipe train).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False,
) -> None:
    """Print a model file's metadata: architecture, classes, µm/px, tile size, training, metrics."""
    from wsipipe.models.io import read_metadata

    meta = read_metadata(model)
    if as_json:
        typer.echo(json.dumps(meta, indent=2))
        return
    for key, value in meta.items():
        text = value if isinstance(value, str) else json.dumps(value)
        typer.echo(f"{key}: {text}")
