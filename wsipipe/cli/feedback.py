"""How a command shows a stage at work: its ``progress(done, total)`` as a rich bar, its Python
warnings and the annotation readers' log records as ``Warning: ...`` / ``Note: ...`` lines on stderr."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from wsipipe.stages.base import Progress

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as ProgressBar
    from rich.progress import TaskID


@contextmanager
def stage_progress(make_bar: Callable[[], ProgressBar] | None, description: str) -> Iterator[Progress]:
    """The ``progress`` callback for a stage's ``run``: a bar (``make_bar()``, a rich ``Progress``) made
    on the first call, so a refused run or an output already complete shows none; None: no bar."""
    shown: list[tuple[ProgressBar, TaskID]] = []  # the bar, once made

    def progress(done: int, total: int) -> None:
        if make_bar is None:
            return
        if not shown:
            bar = make_bar()
            bar.start()
            shown.append((bar, bar.add_task(description, total=total, completed=done)))
        else:
            bar, task = shown[0]
            bar.update(task, completed=done, total=total)

    try:
        yield progress
    finally:
        for bar, _ in shown:
            bar.stop()


def progress_bar(
    console: Console | None = None, *, rate: str | None = None, keep_in_log: bool = False, transient: bool = False
) -> ProgressBar:
    """The one bar every stage command shows on stderr: description, bar, done/total, time left;
    ``rate``: also items/s under that unit ("tiles"). Disabled where stderr is no terminal (a log),
    unless ``keep_in_log`` (its last state is printed there); ``transient``: erased when done."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class ItemsPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} {rate}/s" if speed else f"- {rate}/s", style="progress.data.speed")

    console = console or Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [ItemsPerSecond()] if rate else []
    return Progress(
        *columns,
        TimeRemainingColumn(),
        console=console,
        disable=not (keep_in_log or console.is_terminal),
        transient=transient,
    )


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Each Python warning raised inside (a stage's: a target that is probably not H&E) as one
    ``Warning: MESSAGE`` line on stderr, when it is raised."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: typer.echo(f"Warning: {message}", err=True)
        yield


class _EchoWarnings(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        kind = "Note" if record.levelno < logging.WARNING else "Warning"
        typer.echo(f"{kind}: {record.getMessage()}", err=True)


@contextmanager
def warnings_on_stderr(quiet: bool = False):
    """Print the annotation readers' and writers' warnings (what they skipped, repaired or clipped)
    on stderr while a command runs, and their notes (how a format was mapped), except with ``quiet``."""
    logger = logging.getLogger("wsipipe.annotations")
    handler = _EchoWarnings(logging.WARNING if quiet else logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
