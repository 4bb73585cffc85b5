"""``wsipipe view``: serve a slide and its results to the browser, zoomable, on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsipipe.cli.options import MppOverrideOpt
from wsipipe.view import DEFAULT_HOST, DEFAULT_PORT


def view(
    path: Annotated[
        Path,
        typer.Argument(
            help="A slide, a 'segment' or 'nuclei' output folder, or a 'batch' output folder.", show_default=False
        ),
    ],
    port: Annotated[
        int, typer.Option("--port", help="Port to listen on (0: any free port).", min=0, max=65535)
    ] = DEFAULT_PORT,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on. The default serves this machine only; another address "
            "lets anyone who can reach it see the slides.",
        ),
    ] = DEFAULT_HOST,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Print the address instead of opening the browser.")
    ] = False,
    slide: Annotated[
        Path | None, typer.Option("--slide", help="The slide of an output folder whose slide has moved since the run.")
    ] = None,
    mpp_override: MppOverrideOpt = None,
) -> None:
    """Look at a slide and its results in the browser: pan and zoom, overlays, regions, figures.

    Serves Deep Zoom tiles made on request from the slide, and overlays made from the output folder: predicted classes and tumour probability (prediction.zarr), region outlines, nuclei, the tissue mask and the cellularity heatmap; with a scale bar, legend, the report's figures, a region table that zooms to each region, and the model's provenance. A batch output folder lists its slides with their figures, each linking to its view.

    Only what was given is served, on this machine only unless --host says otherwise; nothing is fetched from the network. Stop with Ctrl-C (exit code 130).
    """
    import webbrowser

    from wsipipe.view import open_view

    server = open_view(path, slide=slide, host=host, port=port, mpp_override=mpp_override)
    try:
        typer.echo(f"wsipipe view: {server.url} (Ctrl-C to stop)")
        if not no_browser:
            webbrowser.open(server.url)
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("Stopped.", err=True)
        raise typer.Exit(130) from None
    finally:
        server.close()
