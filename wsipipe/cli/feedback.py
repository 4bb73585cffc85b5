"""How a command shows a stage at work: its ``progress(done, total)`` as a rich bar and its Python
warnings as ``Warning: ...`` lines on stderr."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer


@contextmanager
def stage_progress(make_bar: Callable[[], object] | None, description: str) -> Iterator[Callable[[int, int], None]]:
    """The ``progress`` callback for a stage's ``run``: a bar (``make_bar()``, a rich ``Progress``) made
    on the first call, so a refused run or an output already complete shows none; None: no bar."""
    bar, task = None, None

    def progress(done: int, total: int) -> None:
        nonlocal bar, task
        if make_bar is None:
            return
        if bar is None:
            bar = make_bar()
            bar.start()
            task = bar.add_task(description, total=total, completed=done)
        else:
            bar.update(task, completed=done, total=total)

    try:
        yield progress
    finally:
        if bar is not None:
            bar.stop()


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Each Python warning raised inside (a stage's: a target that is probably not H&E) as one
    ``Warning: MESSAGE`` line on stderr, when it is raised."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: typer.echo(f"Warning: {message}", err=True)
        yield
