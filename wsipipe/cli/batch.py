"""``wsipipe batch``: run a per-slide job over an archive on Dask, resumably."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsipipe.cli.options import (
    BackendOpt,
    JobBatchSizeOpt,
    JobDeviceOpt,
    JobNormalizeOpt,
    JobQcOpt,
    ModelOpt,
    MppOverrideOpt,
    NucleiModelOpt,
    NucleiOpt,
    OverlapOpt,
    QuietOpt,
    TargetOpt,
    WorkersOpt,
    output_option,
    parameter_flags,
)

SUMMARY_TABLE_ROWS = 50
TABLE_FIGURES = 2


def batch(
    ctx: typer.Context,
    input_path: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="Folder of slides (searched recursively) or a CSV manifest with columns slide, "
            "annotation (optional) and per-slide options (optional).",
            show_default=False,
        ),
    ],
    outdir: Annotated[Path, output_option("Output folder: one sub-folder per slide, status.csv, summary.*")],
    job: Annotated[
        str,
        typer.Option(
            "--job",
            help="Per-slide job: 'segment' (tumour segmentation, as 'wsipipe segment'), 'qc' (slide quality "
            "control, as 'wsipipe qc'; adds qc_cohort.html), 'info' (open, check and describe each slide) or "
            "your own function as package.module:function.",
        ),
    ] = "segment",
    pattern: Annotated[
        str,
        typer.Option(
            "--pattern",
            help="File-name patterns searched in an INPUT folder, comma-separated. .dcm files are grouped "
            "by DICOM series (one slide per series; other DICOM, such as a Segmentation, is left out).",
        ),
    ] = "*.ndpi,*.svs,*.tif,*.tiff,*.dcm",
    workers: WorkersOpt = None,
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Use a running Dask cluster (tcp://HOST:PORT) instead of local workers."),
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Process again slides that failed before.")
    ] = False,
    limit: Annotated[int | None, typer.Option("--limit", help="Process at most N slides in this run.", min=1)] = None,
    model: ModelOpt = None,
    normalize: JobNormalizeOpt = None,
    target: TargetOpt = None,
    overlap: OverlapOpt = None,
    batch_size: JobBatchSizeOpt = None,
    device: JobDeviceOpt = None,
    nuclei: NucleiOpt = False,
    nuclei_model: NucleiModelOpt = None,
    qc: JobQcOpt = None,
    backend: BackendOpt = None,
    mpp_override: MppOverrideOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run a job over every slide of an archive, one slide per Dask task.

    Run it again to resume: done slides are kept unless their file changed.

    The segment job takes --model, --normalize, --target, --overlap, --batch-size, --device, --nuclei,
    --nuclei-model and --qc as 'wsipipe segment' does (default: segment's); CUDA slides go to workers with
    a GPU, and a slide that quality control finds not brightfield H&E is skipped, saying why.

    Exit code 0 when no slide failed, 1 when any failed.
    """
    import os

    from rich.console import Console

    from wsipipe.batch import discover, job_spec, run_batch
    from wsipipe.errors import InvalidInputError, SlidesFailedError

    if workers is not None and scheduler is not None:
        raise InvalidInputError("give --workers or --scheduler, not both (workers of a scheduler are its own)")
    spec = job_spec(job)
    entries = discover(input_path, pattern, exclude=outdir)
    stdout = Console()
    with _ProgressReporter(Console(stderr=True), quiet) as reporter:
        records = run_batch(
            entries,
            outdir,
            spec,
            {
                "model": model,
                "normalize": normalize,
                "target": target,
                "overlap": overlap,
                "batch_size": batch_size,
                "device": device,
                "backend": backend,
                "mpp_override": mpp_override,
                "nuclei": nuclei or None,
                "nuclei_model": nuclei_model,
                "qc": qc,  # None: not given, not in the fingerprint
            },  # fmt: skip
            workers=workers or os.cpu_count() or 1,
            scheduler=scheduler,
            retry_failed=retry_failed,
            limit=limit,
            reporter=reporter,
            parameter_names=parameter_flags(ctx.find_root().command),  # a slide's error names flags, as here
        )
    counts = {state: sum(r.state == state for r in records) for state in ("done", "failed", "skipped", "pending")}
    if not quiet:
        _print_summary(stdout, records)
    stdout.print(
        f"{len(records)} slides: {counts['done']} done, {counts['failed']} failed, "
        f"{counts['skipped']} skipped, {counts['pending']} not yet processed. "
        f"Status: {outdir / 'status.csv'}, summary: {outdir / 'summary.html'}"
    )
    if counts["failed"]:
        raise SlidesFailedError(
            f"{counts['failed']} of {len(records)} slides failed (tracebacks in {outdir / 'errors'}); "
            "run again with --retry-failed to retry them"
        )


class _ProgressReporter:
    """Overall progress bar (done, failed, ETA) and one line per finished slide, on stderr."""

    def __init__(self, console, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

        self.console = console
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("slides"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[done]} done[/] [red]{task.fields[failed]} failed[/]"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
        )
        self.task: TaskID | None = None

    def __enter__(self):
        return self  # the bar starts with the slides (start): a refused batch prints its one line alone

    def __exit__(self, *exc):
        if self.task is not None:  # stopping a bar never started would still print a blank line
            self.progress.stop()

    def start(self, records, todo: int) -> None:
        done = sum(r.state == "done" for r in records)
        failed = sum(r.state == "failed" for r in records)
        if not self.quiet:
            self.console.print(f"{len(records)} slides: {done} already done, {failed} failed before, {todo} to process")
        self.progress.start()
        self.task = self.progress.add_task("batch", total=todo, done=0, failed=0)

    def slide_finished(self, record) -> None:
        assert self.task is not None, "start() comes first"
        fields = self.progress.tasks[0].fields
        key = "failed" if record.state == "failed" else "done"
        self.progress.update(self.task, advance=1, **{key: fields[key] + 1})
        if self.quiet:
            return
        from rich.markup import escape

        seconds = f"{record.seconds:.1f}s" if record.seconds is not None else ""
        if record.state == "done":
            figures = " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.figures.items()
            )
            self.console.print(f"[green]done[/]    {escape(record.key)}  {seconds}  {escape(figures)}", highlight=False)
        else:
            self.console.print(
                f"[red]{record.state}[/]  {escape(record.key)}  {seconds}  {escape(record.error)}", highlight=False
            )


def _print_summary(console, records) -> None:
    from rich.markup import escape
    from rich.table import Table

    from wsipipe.batch.summary import summary_rows

    header, rows = summary_rows(records)
    # The terminal gets the key, state, time and the first figures; summary.csv and .html have all.
    figures = [i for i, h in enumerate(header) if h not in ("name", "key", "state", "seconds", "error")]
    shown = [header.index("key"), header.index("state"), header.index("seconds"), *figures[:TABLE_FIGURES]]
    table = Table(title="wsipipe batch summary")
    for i in shown:
        name = header[i]
        table.add_column(name, no_wrap=True, overflow="ellipsis", min_width=min(len(name), 7),
                         max_width=32 if name == "key" else 12)  # fmt: skip
    for row in rows[:SUMMARY_TABLE_ROWS]:
        table.add_row(*(escape(row[i]) for i in shown))
    console.print(table)
    if len(rows) > SUMMARY_TABLE_ROWS:
        console.print(f"... {len(rows) - SUMMARY_TABLE_ROWS} more slides in summary.csv")
