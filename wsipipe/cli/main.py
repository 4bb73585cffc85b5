"""The ``wsipipe`` command: global options, command registration and error-to-exit-code mapping."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer._click.core import Context
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperGroup

from wsipipe import __version__
from wsipipe.cli import annotations as annotations_cmd
from wsipipe.cli import batch as batch_cmd
from wsipipe.cli import evaluate as evaluate_cmd
from wsipipe.cli import info as info_cmd
from wsipipe.cli import models as models_cmd
from wsipipe.cli import normalize as normalize_cmd
from wsipipe.cli import nuclei as nuclei_cmd
from wsipipe.cli import qc as qc_cmd
from wsipipe.cli import segment as segment_cmd
from wsipipe.cli import synth as synth_cmd
from wsipipe.cli import tile as tile_cmd
from wsipipe.cli import train as train_cmd
from wsipipe.cli import view as view_cmd
from wsipipe.cli.options import AliasedCommand, parameter_flags
from wsipipe.errors import DiskFullError, WsipipeError

_state = {"debug": False}


class _WsipipeGroup(TyperGroup):
    """Turns every failure into one line and an exit code; ``--debug`` keeps the traceback."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Usage errors (unknown option or command, missing argument, bad value) as one line, exit 2."""
        if not standalone_mode:
            return super().main(
                args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra
            )
        try:
            code = super().main(
                args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra
            )
        except NoArgsIsHelpError as exc:  # the help is already printed
            sys.exit(exc.exit_code)
        except ClickException as exc:
            typer.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except (
            typer.Exit,
            typer.Abort,
            typer.TyperException,
        ):  # typer vendors click (>= 0.29): its usage errors are TyperExceptions
            raise
        except BrokenPipeError:  # output piped into e.g. `head`, which has closed: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except KeyboardInterrupt:
            typer.echo("Interrupted; run the same command again to resume.", err=True)
            ctx.exit(130)
        except Exception as exc:
            if _state["debug"]:
                raise
            error = _disk_full(exc) or exc
            if isinstance(error, WsipipeError):  # the parameters it names, as flags
                typer.echo(f"Error: {error.text(parameter_flags(self))}", err=True)
                ctx.exit(error.exit_code)
            # a bug: one line unless --debug
            typer.echo(
                f"Internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                err=True,
            )
            ctx.exit(1)


def _disk_full(exc: BaseException) -> DiskFullError | None:
    """A full disk (or quota) anywhere in ``exc``'s chain of causes, whatever wrapped it."""
    seen = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFullError(link.filename)
        link = link.__cause__ or link.__context__
    return None


app = typer.Typer(
    cls=_WsipipeGroup,
    name="wsipipe",
    help="Whole-slide pathology pipeline: read slides, tile, normalise stains, segment tumour, "
    "count nuclei, report. Each stage reads and writes zarr stores, so runs can resume.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wsipipe {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    _state["debug"] = debug


app.command("info")(info_cmd.info)
app.command("synth")(synth_cmd.synth)
app.add_typer(annotations_cmd.app, name="annotations")
app.command("qc")(qc_cmd.qc)
app.command("tile", cls=AliasedCommand)(tile_cmd.tile)
app.command("normalize")(normalize_cmd.normalize)
app.command("segment", cls=AliasedCommand)(segment_cmd.segment)
app.command("nuclei")(nuclei_cmd.nuclei)
app.command("batch")(batch_cmd.batch)
app.add_typer(models_cmd.app, name="models")
app.command("train")(train_cmd.train)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("predict")(evaluate_cmd.predict)
app.command("view")(view_cmd.view)


def run() -> None:
    """Console-script entry point."""
    sys.exit(app())


if __name__ == "__main__":  # python -m wsipipe.cli.main, as python -m wsipipe
    run()
