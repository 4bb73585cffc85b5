"""Option types shared by several commands, so each option is spelled and documented once; the
old spellings still accepted; and the flag of each parameter a library error names."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from typer._click.core import Command, Context
from typer.core import TyperCommand, TyperOption

SlideArg = Annotated[
    Path,
    typer.Argument(
        help="Slide file (SVS, NDPI, OME-TIFF, pyramidal TIFF), or a DICOM WSI: a folder holding one series or any .dcm file of it.",
        show_default=False,
    ),
]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="Slide reader: 'openslide', 'tiffslide' or (DICOM only) 'wsidicom'. Default: openslide, then "
        "tiffslide (DICOM: wsidicom) if it fails.",
    ),
]
MppOverrideOpt = Annotated[
    float | None,
    typer.Option(
        "--mpp-override",
        help="µm per pixel at level 0, for slides whose metadata lacks it.",
        min=1e-6,
    ),
]
ReadersOpt = Annotated[
    int,
    typer.Option(
        "--readers",
        help="Parallel slide readers, one slide handle each: threads (tile) or processes (segment); 0 reads in "
        "the main process.",
        min=0,
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", "-w", help="Dask worker processes of the local cluster (default: one per CPU).", min=1),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output instead of resuming it.")]
_QC = typer.Option(
    "--qc",
    help="Slide quality control: 'auto' runs it (seconds) and leaves out-of-focus, pen, fold, bubble and "
    "badly exposed areas out; a path reuses a `wsipipe qc` output folder or its qc.zarr; 'off' skips "
    "it. A slide that is not brightfield H&E is refused (exit 2) unless 'off'.",
)
QcOpt = Annotated[str, _QC]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
_DEVICE = typer.Option("--device", help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N.")
DeviceOpt = Annotated[str, _DEVICE]
_OVERLAP = typer.Option(
    "--overlap",
    help="Pixels shared by neighbouring tiles: at the tile scale (tile), or at the model's µm/px and less "
    "than half a tile (segment, evaluate, predict; default: a quarter tile).",
    min=0,
)
OverlapOpt = Annotated[int | None, _OVERLAP]
#: ``tile``'s overlap always has a value (0 by default); the inference commands' default depends on the model.
TileOverlapOpt = Annotated[int, _OVERLAP]
_BATCH_SIZE = typer.Option("--batch-size", help="Tiles per forward pass (train: patches per step).", min=1)
BatchSizeOpt = Annotated[int, _BATCH_SIZE]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="Model file (.safetensors). Default: the bundled tumour model (segment, batch); for nuclei the "
        "classical method, no model ('bundled': the US-Net model shipped with wsipipe).",
    ),
]
_NORMALIZE = typer.Option(
    "--normalize",
    help="Stain normalisation with the slide's own stain matrix: model (what the model file records it was "
    "trained with; the bundled model: none), vahadane, macenko, reinhard or none.",
)
NormalizeOpt = Annotated[str, _NORMALIZE]
#: batch passes these on to its job: None (not given) leaves segment's default.
JobQcOpt = Annotated[str | None, _QC]
JobDeviceOpt = Annotated[str | None, _DEVICE]
JobBatchSizeOpt = Annotated[int | None, _BATCH_SIZE]
JobNormalizeOpt = Annotated[str | None, _NORMALIZE]
TargetOpt = Annotated[
    Path | None,
    typer.Option(
        "--target",
        help="Stain target: an H&E image (PNG, JPEG, TIFF) whose colours the tiles take. Default: the built-in "
        "target (CMU-1-Small-Region), or what the model file records (--normalize model).",
    ),
]
NucleiOpt = Annotated[
    bool,
    typer.Option(
        "--nuclei",
        help="Also find the nuclei over the tissue (classical method) and report nuclei count, density per mm² "
        "of tissue and of tumour, and cellularity (malignant nuclei area / tumour area; nuclei inside the "
        "predicted tumour count as malignant).",
    ),
]
NucleiModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--nuclei-model",
        help="A US-Net nuclei model file ('bundled': the one shipped with wsipipe) instead of the classical "
        "method (implies --nuclei).",
    ),
]
StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Refuse a bad annotation (exit 2) instead of skipping or repairing it with a warning, "
        "and a label map that matches no annotation.",
    ),
]
LabelMapOpt = Annotated[
    str | None,
    typer.Option(
        "--label-map",
        help="Mask value per annotation label, in priority order (later entries win where labels "
        "overlap; value 0 cuts holes): 'Tumor=1,Exclusion=0', or a file (JSON object or name=value "
        "lines). Default: each label 1, 2, ... in file order; Exclusion and CAMELYON '_2' are 0.",
    ),
]


def output_option(help: str):
    """``--output`` / ``-o``, the one spelling of every command's output (``Annotated[Path, output_option(...)]``);
    ``help`` says what is written."""
    return typer.Option("--output", "-o", help=help, show_default=False)


#: Old spellings each command still accepts, hidden from --help, so scripts written for them keep working.
HIDDEN_ALIASES = {
    "segment": {"--out": "--output", "--workers": "--readers", "-w": "--readers"},
    "tile": {"--workers": "--readers", "-w": "--readers"},
}


class AliasedCommand(TyperCommand):
    """A command that reads its ``HIDDEN_ALIASES`` as the options they stand for."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        aliases = HIDDEN_ALIASES.get(self.name or "", {})
        spelled = []
        for index, arg in enumerate(args):
            if arg == "--":  # what follows is arguments, never options
                spelled.extend(args[index:])
                break
            spelled.append(_unalias(arg, aliases))
        return super().parse_args(ctx, spelled)


def _unalias(arg: str, aliases: dict[str, str]) -> str:
    """``arg`` with an alias replaced: ``--out X``, ``--out=X``, ``-w X`` and ``-wX`` alike."""
    for alias, option in aliases.items():
        if arg == alias:
            return option
        if alias.startswith("--") and arg.startswith(alias + "="):
            return option + arg[len(alias) :]
        if not alias.startswith("--") and arg.startswith(alias) and not arg.startswith("--"):
            return f"{option}={arg[len(alias) :]}"
    return arg


#: Library parameter names that a command spells otherwise: the command's parameter for each.
LIBRARY_NAMES = {
    "tiles_store": "tiles",
    "groups_csv": "groups",
    "sources": "source",
}


@functools.cache
def parameter_flags(root: Command) -> dict[str, str]:
    """Each parameter of ``root``'s commands (and the library's names for them) with its flag: how the
    CLI writes the parameters a library error names (``WsipipeError.text``)."""
    flags: dict[str, str] = {}
    commands = [root]
    while commands:
        command = commands.pop()
        commands.extend(getattr(command, "commands", {}).values())
        for param in command.params:
            if isinstance(param, TyperOption) and param.name and not param.hidden:
                flags.setdefault(param.name, next((o for o in param.opts if o.startswith("--")), param.opts[0]))
    for library, cli in LIBRARY_NAMES.items():
        flags.setdefault(library, flags[cli])
    return flags
