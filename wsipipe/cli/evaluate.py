"""``wsipipe evaluate`` (a model on labelled images, nuclei instances, cellularity scores) and ``wsipipe predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from wsipipe.cli.options import BatchSizeOpt, DeviceOpt, OverlapOpt, QuietOpt, output_option
from wsipipe.files import atomic_path, check_output_folder, write_atomic

ModelArg = Annotated[Path, typer.Argument(help="Model file (.safetensors).", show_default=False)]
ImagesMppOpt = Annotated[
    float | None,
    typer.Option(
        "--mpp", help="µm/px of the images (default: the training data's, from the model's metadata).", min=1e-6
    ),
]


def _images_mpp(meta: dict, mpp: float | None, recorded: float | None = None) -> float:
    """--mpp, else what the data records (tile stores), else the model's training data µm/px."""
    if mpp is not None:
        return mpp
    if recorded is not None:
        return recorded
    return float(meta.get("training", {}).get("data", {}).get("data_mpp", meta["mpp"]))


TASKS = ("semantic", "instances", "cellularity")


def evaluate(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="MODEL | PRED TRUTH",
            help="semantic: the model file. instances: PRED (a 'wsipipe nuclei' output folder, labels.zarr or "
            "instance label image; or a folder of them) and TRUTH (an instance label image or an Aperio/ASAP/"
            "GeoJSON file of nucleus outlines; or a folder of them, matched by name). cellularity: PRED.csv "
            "and TRUTH.csv.",
            show_default=False,
        ),
    ],
    task: Annotated[
        str, typer.Option("--task", help="semantic (a model on images/ + masks/), instances or cellularity.")
    ] = "semantic",
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="semantic: folder with images/ and masks/, or tile store(s) with masks (a .zarr or a folder of them).",
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write all figures as JSON here.")] = None,
    score_column: Annotated[
        str | None,
        typer.Option(
            "--score-column",
            help="instances: nuclei.csv column ranking the predictions for AP (default: none, all tied).",
        ),
    ] = None,
    mpp: ImagesMppOpt = None,
    overlap: OverlapOpt = None,
    batch_size: BatchSizeOpt = 8,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Score predictions against ground truth.

    semantic (default): MODEL --data DIR segments every image as slide inference does (model scale, overlapping tiles, blending) and compares with its mask: mIoU, accuracy, kappa, IoU and Dice per class, confusion matrix.

    instances: PRED TRUTH gives Dice, AJI, PQ (DQ, SQ) and detection precision, recall and F1 at IoU > 0.5 per image and their mean, and VOC AP pooled over the images, on the prediction's pixel grid (truth resized onto it).

    cellularity: PRED.csv TRUTH.csv gives PK; each file's value column is 'cellularity' if present, else its last column, and cases are matched by the other columns both share.
    """
    from wsipipe.errors import InvalidInputError

    if task not in TASKS:
        raise InvalidInputError(f"--task {task!r}: choose one of {', '.join(TASKS)}")
    wanted = 1 if task == "semantic" else 2
    if len(inputs) != wanted:
        usage = "MODEL --data DIR" if task == "semantic" else "PRED TRUTH"
        raise InvalidInputError(f"--task {task} takes {usage}, got {len(inputs)} argument(s)")
    if (data is not None) != (task == "semantic"):
        raise InvalidInputError("--data DIR is needed by --task semantic and by no other task")
    if data is not None:  # --task semantic, the one task with --data (checked above)
        result = _evaluate_model(inputs[0], data, mpp, overlap, batch_size, device, quiet)
    elif task == "instances":
        result = _evaluate_instances(inputs[0], inputs[1], score_column, quiet)
    else:
        from wsipipe.nuclei.scoring import score_cellularity

        result = score_cellularity(inputs[0], inputs[1])
        typer.echo(f"PK {result['pk']:.4f} over {result['n_cases']} cases")
    if json_out is not None:
        write_atomic(json_out, json.dumps(result, indent=2))


def _evaluate_model(model: Path, data: Path, mpp, overlap, batch_size, device, quiet) -> dict:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from wsipipe.inference.evaluate import evaluate_items
    from wsipipe.models.io import load_model
    from wsipipe.training.data import read_dataset

    bundle = load_model(model)
    dataset = read_dataset(data)
    with Progress(console=Console(stderr=True), disable=quiet) as progress:
        task = progress.add_task("evaluating", total=len(dataset.items))
        result = evaluate_items(
            bundle,
            dataset.items,
            _images_mpp(bundle.metadata, mpp, dataset.mpp),
            overlap,
            batch_size,
            device,
            on_image=lambda name: progress.advance(task),
        )
    table = Table(
        "image" if dataset.kind == "images" else "slide",
        "mIoU",
        "accuracy",
        "kappa",
        *[f"IoU {c}" for c in bundle.classes],
    )
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for name, row in [*result["per_image"].items(), ("ALL (pooled)", result)]:
        table.add_row(
            name,
            fmt(row["miou"]),
            fmt(row["accuracy"]),
            fmt(row["kappa"]),
            *[fmt(row["iou"][c]) for c in bundle.classes],
        )
    Console().print(table)
    return result


def _evaluate_instances(predictions: Path, truths: Path, score_column, quiet) -> dict:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from wsipipe.nuclei.scoring import INSTANCE_FIGURES, instance_pairs, score_instances

    pairs = instance_pairs(predictions, truths)
    with Progress(console=Console(stderr=True), disable=quiet, transient=True) as progress:
        task = progress.add_task("scoring", total=len(pairs))
        result = score_instances(pairs, score_column, on_image=lambda name: progress.advance(task))
    table = Table("image", *(name.upper() if len(name) <= 3 else name.title() for name in INSTANCE_FIGURES))
    for name, row in [*result["per_image"].items(), ("mean", result["mean"])]:
        table.add_row(name, *(f"{row[k]:.3f}" for k in INSTANCE_FIGURES))
    Console().print(table)
    typer.echo(
        f"VOC AP at IoU > {result['match_iou']}: {result['ap']:.4f}"
        + (f" (ranked by {score_column})" if score_column else " (predictions unranked: precision x recall)")
    )
    return result


def predict(
    model: ModelArg,
    images: Annotated[
        list[Path],
        typer.Argument(
            metavar="IMAGE", help="RGB image(s) (PNG, JPEG, TIFF); one for a segmentation model.", show_default=False
        ),
    ],
    output: Annotated[
        Path | None,
        output_option(
            "Segmentation: the mask PNG to write (class indices; 0/255 for two classes). Cellularity: a CSV of image,cellularity (optional; image paths relative to its folder)."
        ),
    ] = None,
    mpp: ImagesMppOpt = None,
    overlap: OverlapOpt = None,
    batch_size: BatchSizeOpt = 8,
    device: DeviceOpt = "auto",
) -> None:
    """Segment one image and write its mask; with a cellularity model, score each image (the mean
    over a grid of tile-size crops at the model's µm/px) and print the scores, or write them as a
    CSV that 'evaluate --task cellularity' reads."""
    from PIL import Image

    from wsipipe.errors import InvalidInputError
    from wsipipe.inference.sliding import predict_image
    from wsipipe.models.io import load_model
    from wsipipe.training.data import read_image

    if output is not None:
        check_output_folder(output)
    bundle = load_model(model)
    if bundle.metadata["architecture"] == "cellularity":
        _predict_cellularity(bundle, images, output, mpp, batch_size, device)
        return
    if len(images) != 1 or output is None:
        raise InvalidInputError("a segmentation model takes one IMAGE and -o MASK.png")
    labels = predict_image(
        bundle, read_image(images[0]), _images_mpp(bundle.metadata, mpp), overlap, batch_size, device
    ).argmax(0)
    mask = (labels * 255 if len(bundle.classes) == 2 else labels).astype("uint8")
    with atomic_path(output) as temporary:
        Image.fromarray(mask).save(temporary, format="PNG")
    typer.echo(
        f"wrote {output} ({', '.join(f'{c}: {(labels == i).mean():.1%}' for i, c in enumerate(bundle.classes))})"
    )


def _predict_cellularity(bundle, images: list[Path], output: Path | None, mpp, batch_size: int, device: str) -> None:
    """Scores printed, or written with the images named as a training scores CSV names them."""
    from wsipipe.device import resolve_device
    from wsipipe.nuclei.cellularity import predict_cellularity, write_scores_csv
    from wsipipe.nuclei.data import resample
    from wsipipe.training.data import read_image

    device = str(resolve_device(device))
    scale_mpp = _images_mpp(bundle.metadata, mpp)
    rows = []
    for image in images:
        rgb, _ = resample(read_image(image), None, scale_mpp, bundle.mpp)
        score = predict_cellularity(bundle, rgb, device, batch_size)
        rows.append((_relative_to(image, output.parent) if output is not None else str(image), score))
        if output is None:
            typer.echo(f"{image}: cellularity {score:.4f}")
    if output is not None:
        write_scores_csv(output, rows)
        typer.echo(f"wrote {output} ({len(rows)} image{'s' if len(rows) != 1 else ''})")


def _relative_to(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when inside it, else absolute."""
    path, folder = path.resolve(), folder.resolve()
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)
