"""``wsipipe train``: train a segmentation model on images and masks or on annotated tile stores,
a nuclei model (``--model usnet``) on nuclei instance data, or the cellularity regressor
(``--model cellularity``) on scored images."""

from __future__ import annotations

import json
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from wsipipe.cli.options import BatchSizeOpt, DeviceOpt, QuietOpt, output_option


def train(
    data: Annotated[
        Path,
        typer.Argument(
            help="Folder with images/ and masks/ (matching names; 0/255 masks are binary, "
            "other values are class indices), or tile store(s) made with "
            "'wsipipe tile --annotations' (a .zarr or a folder of them; split by slide). "
            "With --model usnet: a nuclei folder with cpm15/ and/or monuseg_train/. "
            "With --model cellularity: a CSV with an image column (paths relative to "
            "its folder), a score in [0, 1] ('cellularity', else the last column) and "
            "optionally a group column (e.g. the slide: kept in one fold).",
            show_default=False,
        ),
    ],
    output: Annotated[Path, output_option("Model file to write (.safetensors).")],
    model: Annotated[str, typer.Option("--model", help="Architecture (wsipipe models list).")] = "unet",
    encoder: Annotated[
        str | None, typer.Option("--encoder", help="Encoder for unet/deeplabv3plus, e.g. resnet34, mobilenet_v2.")
    ] = None,
    model_args: Annotated[
        str | None, typer.Option("--model-args", help="More architecture arguments as JSON, e.g. '{\"blocks\": 4}'.")
    ] = None,
    classes: Annotated[
        str, typer.Option("--classes", help="Class names, comma-separated, index order.")
    ] = "background,foreground",
    mpp: Annotated[
        float | None,
        typer.Option(
            "--mpp",
            help="µm/px the model works at [default: 1.0; usnet and cellularity 0.5].",
            min=1e-6,
            show_default=False,
        ),
    ] = None,
    data_mpp: Annotated[
        float | None,
        typer.Option(
            "--data-mpp", help="µm/px of the training images (default: --mpp; tile stores record their own).", min=1e-6
        ),
    ] = None,
    data_mpp_assumed: Annotated[
        bool, typer.Option("--data-mpp-assumed", help="Record --data-mpp as an assumption (unknown scale).")
    ] = False,
    tile_size: Annotated[
        int, typer.Option("--tile-size", help="Model input side in pixels (usnet: the training crop).", min=32)
    ] = 256,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 10,
    patches_per_epoch: Annotated[
        int, typer.Option("--patches-per-epoch", help="Random patches per epoch.", min=1)
    ] = 64,
    batch_size: BatchSizeOpt = 8,
    lr: Annotated[float, typer.Option("--lr", help="Base learning rate (poly decay).", min=0)] = 1e-3,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adamw or sgd (momentum 0.9).")] = "adamw",
    loss: Annotated[str, typer.Option("--loss", help="dice-ce, weighted-ce or focal.")] = "dice-ce",
    focal_gamma: Annotated[float, typer.Option("--focal-gamma", min=0)] = 2.0,
    folds: Annotated[
        int, typer.Option("--folds", help="K-fold cross-validation by image, then a fit on all images (0: off).", min=0)
    ] = 0,
    groups: Annotated[
        Path | None,
        typer.Option(
            "--groups",
            help="CSV with columns image,group: images (file stems) or slides (store names) of one group, e.g. overlapping crops of one slide or one patient's slides, stay in one fold.",
            show_default=False,
        ),
    ] = None,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Images held out for validation without --folds.", min=0, max=0.9)
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    fp16: Annotated[bool, typer.Option("--fp16", help="Store the weights as float16 (half the size).")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the checkpoints an interrupted run left.")
    ] = False,
    normalised_view: Annotated[
        str,
        typer.Option(
            "--normalised-view",
            help="usnet: none or reinhard: at inference the network also sees each input mapped onto the training images' mean colour statistics (a slide's estimated once) and averages the two; training sees the images as they are.",
        ),
    ] = "none",
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            help="cellularity: a deeplabv3plus model file with the same encoder; its encoder starts the training.",
            show_default=False,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Train a model; the best epoch by validation mIoU is kept. Without a validation set the last epoch is kept. Interrupted runs continue with --resume.

    With --model usnet a nuclei model is trained instead (US-Net: segmentation + detection) on CPM-15 / MoNuSeg style data; --folds K reports the held-out images' AJI and PQ, and the last epoch of a fit on every image is kept. --classes, --loss, --optimizer and --val-fraction are for segmentation models only.

    With --model cellularity the regressor learns the scores of a CSV's images (at --mpp; L1 loss, AdamW); --folds K reports the held-out images' MAE and PK, and the last epoch of a fit on every image is kept. --init-from copies a trained DeepLabV3+'s encoder in.
    """
    import torch

    from wsipipe.device import resolve_device
    from wsipipe.errors import InvalidInputError
    from wsipipe.models import get_architecture, resolve_args
    from wsipipe.training.run import run_training
    from wsipipe.training.trainer import TrainConfig

    arch = get_architecture(model)
    try:
        args = json.loads(model_args) if model_args else {}
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"--model-args: not valid JSON ({exc})") from None
    if not isinstance(args, dict):
        raise InvalidInputError("--model-args: must be a JSON object")
    if encoder:
        args["encoder"] = encoder
    args = resolve_args(model, args)
    if tile_size % arch.input_multiple:
        raise InvalidInputError(f"--tile-size {tile_size}: {model} needs a multiple of {arch.input_multiple}")
    device = str(resolve_device(device))
    # the command line as typed (when run from a shell); empty when called in-process, e.g. by tests
    command = shlex.join(["wsipipe", *sys.argv[1:]]) if "train" in sys.argv[1:3] else ""
    if normalised_view != "none" and model != "usnet":
        raise InvalidInputError("--normalised-view is for --model usnet")
    if init_from is not None and model != "cellularity":
        raise InvalidInputError("--init-from is for --model cellularity")
    if groups is not None and model in ("cellularity", "usnet"):
        raise InvalidInputError(
            f"--groups is for segmentation models ({model}: "
            + ("give the scores CSV a group column)" if model == "cellularity" else "folds are by image)")
        )
    if model == "cellularity":
        if data_mpp is not None:
            raise InvalidInputError("--data-mpp: the scored images are taken to be at --mpp (they are not resampled)")
        _train_cellularity(
            data,
            output,
            args,
            mpp,
            tile_size,
            epochs,
            patches_per_epoch,
            batch_size,
            lr,
            folds,
            seed,
            fp16,
            resume,
            init_from,
            device,
            command,
            quiet,
        )
        return
    if model == "usnet":
        if data_mpp is not None:
            raise InvalidInputError("--data-mpp: nuclei data records its own µm/px (CPM-15 README, MoNuSeg XML)")
        _train_nuclei(
            data,
            output,
            args,
            mpp,
            tile_size,
            epochs,
            patches_per_epoch,
            batch_size,
            lr,
            folds,
            seed,
            fp16,
            resume,
            device,
            command,
            quiet,
            normalised_view,
        )
        return
    mpp = 1.0 if mpp is None else mpp
    config = TrainConfig(
        architecture=model,
        args=args,
        classes=[c.strip() for c in classes.split(",") if c.strip()],
        mpp=mpp,
        tile_size=tile_size,
        epochs=epochs,
        patches_per_epoch=patches_per_epoch,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        loss=loss,
        focal_gamma=focal_gamma,
        seed=seed,
        device=device,
        channels_last=device.startswith("cuda"),
    )
    with _epoch_progress(epochs, quiet) as on_step:
        torch.manual_seed(seed)
        meta = run_training(
            data,
            config,
            output,
            data_mpp,
            folds,
            val_fraction,
            resume,
            fp16,
            command,
            on_step,
            mpp_assumed=data_mpp_assumed,
            groups_csv=groups,
        )
    val = meta.get("validation") or {}
    summary = f"wrote {output}"
    if val.get("miou") is not None:
        summary += f"; validation ({val['method']}): mIoU {val['miou']:.4f}, accuracy {val['accuracy']:.4f}, kappa {val['kappa']:.4f}"
    typer.echo(summary)


@contextmanager
def _epoch_progress(epochs: int, quiet: bool):
    """A progress bar per training run (fold or final fit); yields the ``on_step(run, info)`` callback."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=quiet,
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def on_step(run: str, info: dict) -> None:
            if run not in tasks:
                tasks[run] = progress.add_task(run, total=epochs, info="")
            text = f"epoch {info['epoch']}/{epochs} step {info['step']}/{info['steps']} loss {info['loss']:.3f}"
            if info.get("val_miou") is not None:
                text += f" val mIoU {info['val_miou']:.3f}"
            progress.update(tasks[run], completed=info["epoch"] - 1 + info["step"] / info["steps"], info=text)

        yield on_step


def _train_nuclei(
    data: Path,
    output: Path,
    args: dict,
    mpp: float | None,
    crop: int,
    epochs: int,
    patches_per_epoch: int,
    batch_size: int,
    lr: float,
    folds: int,
    seed: int,
    fp16: bool,
    resume: bool,
    device: str,
    command: str,
    quiet: bool,
    normalised_view: str,
) -> None:
    from wsipipe.nuclei.data import WORKING_MPP
    from wsipipe.nuclei.train import NucleiTrainConfig, run_nuclei_training

    config = NucleiTrainConfig(
        args=args,
        mpp=WORKING_MPP if mpp is None else mpp,
        crop=crop,
        epochs=epochs,
        steps_per_epoch=max(1, patches_per_epoch // batch_size),
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
    )
    with _epoch_progress(epochs, quiet) as on_step:
        meta = run_nuclei_training(data, config, output, folds, resume, fp16, command, on_step, normalised_view)
    val = meta.get("validation") or {}
    summary = f"wrote {output}"
    if val:
        summary += f"; validation ({val['method']}): AJI {val['aji']:.4f}, PQ {val['pq']:.4f}"
    typer.echo(summary)


def _train_cellularity(
    scores: Path,
    output: Path,
    args: dict,
    mpp: float | None,
    tile_size: int,
    epochs: int,
    patches_per_epoch: int,
    batch_size: int,
    lr: float,
    folds: int,
    seed: int,
    fp16: bool,
    resume: bool,
    init_from: Path | None,
    device: str,
    command: str,
    quiet: bool,
) -> None:
    from wsipipe.nuclei.cellularity_train import CellularityTrainConfig, run_cellularity_training
    from wsipipe.nuclei.data import WORKING_MPP

    config = CellularityTrainConfig(
        args=args,
        mpp=WORKING_MPP if mpp is None else mpp,
        tile_size=tile_size,
        epochs=epochs,
        steps_per_epoch=max(1, patches_per_epoch // batch_size),
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        init_from=None if init_from is None else str(init_from),
    )
    with _epoch_progress(epochs, quiet) as on_step:
        meta = run_cellularity_training(scores, config, output, folds, resume, fp16, command, on_step)
    val = meta.get("validation") or {}
    summary = f"wrote {output}"
    if val:
        pk = "undefined (all scores equal)" if val["pk"] is None else f"{val['pk']:.4f}"
        summary += f"; validation ({val['method']}): MAE {val['mae']:.4f}, PK {pk}"
    typer.echo(summary)
