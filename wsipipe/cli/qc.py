"""``wsipipe qc``: a slide's quality control (artefact masks, usable tissue, verdict)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsipipe.cli.options import BackendOpt, MppOverrideOpt, QuietOpt, SlideArg, output_option


def qc(
    slide: SlideArg,
    output: Annotated[Path, output_option("Output folder for qc.json, qc.zarr and qc.png.")],
    backend: BackendOpt = None,
    mpp_override: MppOverrideOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Check SLIDE for out-of-focus areas, pen ink, folds, bubbles / dark debris, over- and
    under-exposure, its stain and whether it is brightfield; write qc.json (figures, verdict,
    thresholds), qc.zarr (one mask per artefact and the usable tissue) and qc.png.

    Exit 0 when QC ran (the verdict, usable or not, is in qc.json and printed); 1 for an unreadable
    slide or output folder; 2 for bad options.
    """
    from wsipipe import stages

    config = stages.QcConfig(slide=slide, output=output, backend=backend, mpp_override=mpp_override)
    if quiet:
        result = stages.qc.run(config)
    else:
        from rich.console import Console

        with Console(stderr=True).status("quality control", spinner="dots"):
            result = stages.qc.run(config)
    flagged = ", ".join(
        f"{name} {fig['fraction']:.1%}" for name, fig in result.artefacts.items() if fig["fraction"] > 0
    )
    verdict = "usable" if result.usable else "NOT usable"
    typer.echo(f"{slide.name}: {verdict} ({result.verdict_reason}); flagged: {flagged or 'nothing'} -> {output}")
