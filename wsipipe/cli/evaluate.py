"""``wsipipe evaluate`` and ``wsipipe predict``: run a model file on labelled images or one image."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from wsipipe.cli.options import DeviceOpt, QuietOpt

ModelArg = Annotated[Path, typer.Argument(help="Model file (.safetensors).", show_default=False)]
ImagesMppOpt = Annotated[
    Optional[float],
    typer.Option("--mpp", help="µm/px of the images (default: the training data's, from the model's metadata).", min=1e-6),
]
OverlapOpt = Annotated[Optional[int], typer.Option("--overlap", help="Tile overlap in px (default: a quarter tile).", min=0)]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1)]


def _images_mpp(meta: dict, mpp: float | None, recorded: float | None = None) -> float:
    """--mpp, else what the data records (tile stores), else the model's training data µm/px."""
    if mpp is not None:
        return mpp
    if recorded is not None:
        return recorded
    return float(meta.get("training", {}).get("data", {}).get("data_mpp", meta["mpp"]))


def evaluate(
    model: ModelArg,
    data: Annotated[Path, typer.Option("--data", help="Folder with images/ and masks/, or tile store(s) with masks "
                                                          "(a .zarr or a folder of them).", show_default=False)],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write all figures as JSON here.")] = None,
    mpp: ImagesMppOpt = None,
    overlap: OverlapOpt = None,
    batch_size: BatchOpt = 8,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Segment every image as slide inference does (model scale, overlapping tiles, blending) and
    compare with its mask: mIoU, accuracy, kappa, IoU and Dice per class, confusion matrix."""
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
        result = evaluate_items(bundle, dataset.items, _images_mpp(bundle.metadata, mpp, dataset.mpp), overlap,
                                batch_size, device, on_image=lambda name: progress.advance(task))
    table = Table("image" if dataset.kind == "images" else "slide", "mIoU", "accuracy", "kappa", *[f"IoU {c}" for c in bundle.classes])
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for name, row in [*result["per_image"].items(), ("ALL (pooled)", result)]:
        table.add_row(name, fmt(row["miou"]), fmt(row["accuracy"]), fmt(row["kappa"]), *[fmt(row["iou"][c]) for c in bundle.classes])
    Console().print(table)
    if json_out is not None:
        tmp = json_out.with_name(f".{json_out.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, json_out)


def predict(
    model: ModelArg,
    image: Annotated[Path, typer.Argument(help="RGB image (PNG, JPEG, TIFF).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Mask PNG to write: class indices; 0/255 for two classes.")],
    mpp: ImagesMppOpt = None,
    overlap: OverlapOpt = None,
    batch_size: BatchOpt = 8,
    device: DeviceOpt = "auto",
) -> None:
    """Segment one image and write its mask."""
    from PIL import Image

    from wsipipe.errors import OutputError
    from wsipipe.inference.sliding import predict_image
    from wsipipe.models.io import load_model
    from wsipipe.training.data import read_image

    bundle = load_model(model)
    rgb = read_image(image)
    labels = predict_image(bundle, rgb, _images_mpp(bundle.metadata, mpp), overlap, batch_size, device).argmax(0)
    mask = (labels * 255 if len(bundle.classes) == 2 else labels).astype("uint8")
    if not output.parent.is_dir():
        raise OutputError(f"-o {output}: folder {output.parent} does not exist")
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}.png")
    try:
        Image.fromarray(mask).save(tmp)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    typer.echo(f"wrote {output} ({', '.join(f'{c}: {(labels == i).mean():.1%}' for i, c in enumerate(bundle.classes))})")
