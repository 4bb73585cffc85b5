"""Train the cellularity regressor on scored images: what ``wsipipe train --model cellularity`` runs.

The data is a CSV of (image, score) pairs. Training samples random ``tile_size`` crops (90° turns,
flips, colour and HED stain jitter, via ``wsipipe.training.data.sample_patch``), optimises the L1
``cellularity_loss`` with AdamW under the poly schedule, and checkpoints every epoch so an
interrupted run resumes exactly. ``run_cellularity_training`` adds k-fold cross-validation by image
(MAE and PK of the held-out images, each predicted as ``predict_cellularity`` does) and the final
fit on every image, and writes the model file with its command, seed and figures.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wsipipe.errors import InvalidInputError
from wsipipe.files import check_output_folder

#: The one output "class" of a cellularity model file.
CELLULARITY_CLASSES = ["cellularity"]


@dataclass(frozen=True)
class ScoredImage:
    name: str  # the CSV's image entry
    image: np.ndarray  # (H, W, 3) uint8
    score: float  # reference cellularity in [0, 1]
    group: str  # the CSV's group entry (e.g. the slide), else the image entry: folds never split one


@dataclass(frozen=True)
class CellularityTrainConfig:
    args: dict
    mpp: float = 0.5
    tile_size: int = 256
    epochs: int = 10
    steps_per_epoch: int = 8
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    init_from: str | None = None  # segmentation model file whose encoder starts every run

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def cellularity_model_metadata(config: CellularityTrainConfig, **extra) -> dict:
    from wsipipe.models.io import model_metadata

    return model_metadata("cellularity", config.args, CELLULARITY_CLASSES, config.mpp, config.tile_size, **extra)


def read_scores(csv_path: Path) -> list[ScoredImage]:
    """The images and scores of a CSV with an ``image`` column and a score column (``cellularity``
    if present, else the last, as ``evaluate --task cellularity`` reads it), and optionally a
    ``group`` column (the slide or image each one was cut from, kept in one fold).

    Image paths are relative to the CSV's folder and must stay inside it: a scores file from
    elsewhere cannot make training read arbitrary files.
    """
    from wsipipe.nuclei.scoring import GROUP_COLUMN, value_column
    from wsipipe.training.data import read_image

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InvalidInputError(f"{csv_path}: no such scores file")
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    if "image" not in header:
        raise InvalidInputError(f"{csv_path}: needs an 'image' column (has {', '.join(header) or 'no header'})")
    column = value_column(header)
    if column == "image":
        raise InvalidInputError(f"{csv_path}: needs a score column besides 'image'")
    if not rows:
        raise InvalidInputError(f"{csv_path}: no rows")
    root = csv_path.parent.resolve()
    samples = []
    for line, row in enumerate(rows, start=2):
        entry = row["image"] or ""
        path = (root / entry).resolve()
        if not entry or not path.is_relative_to(root):
            raise InvalidInputError(f"{csv_path} line {line}: image {entry!r} is not a path inside {root}")
        try:
            score = float(row[column])
        except (TypeError, ValueError):
            raise InvalidInputError(f"{csv_path} line {line}: {column} {row[column]!r} is not a number") from None
        if not 0 <= score <= 1:
            raise InvalidInputError(f"{csv_path} line {line}: {column} {score} is outside [0, 1]")
        if not path.is_file():
            raise InvalidInputError(f"{csv_path} line {line}: image {entry} does not exist")
        group = (row.get(GROUP_COLUMN) or "").strip() or entry
        samples.append(ScoredImage(entry, read_image(path), score, group))
    return samples


def copy_segmentation_encoder(network, model_file: Path, seg_encoder: str) -> None:
    """Start ``network`` from the encoder of a DeepLabV3+ model file (``--init-from``); anything
    else, or another encoder, is a usage error."""
    from safetensors.torch import load_file

    from wsipipe.errors import ModelError
    from wsipipe.models.cellularity import load_segmentation_encoder
    from wsipipe.models.io import read_metadata

    try:
        meta = read_metadata(model_file)
    except ModelError as exc:
        raise InvalidInputError(f"{{init_from}} {exc}", parameter="init_from") from None
    if meta["architecture"] != "deeplabv3plus":
        raise InvalidInputError(
            f"{{init_from}} {model_file}: a {meta['architecture']} model, not deeplabv3plus", parameter="init_from"
        )
    encoder = meta["args"].get("encoder")
    if encoder != seg_encoder:
        raise InvalidInputError(
            f"{{init_from}} {model_file}: encoder {encoder}, the cellularity model's is {seg_encoder}",
            parameter="init_from",
        )
    try:
        load_segmentation_encoder(network, {k: v.float() for k, v in load_file(str(model_file)).items()})
    except ValueError as exc:
        raise InvalidInputError(f"{{init_from}} {model_file}: {exc}", parameter="init_from") from None


def train_cellularity(
    samples: list[ScoredImage],
    config: CellularityTrainConfig,
    checkpoint: Path | None = None,
    resume: bool = False,
    on_step: Callable[[dict], None] | None = None,
):
    """A cellularity network trained on ``samples``; returns it in eval mode.

    With ``checkpoint``, the state is saved after every epoch; ``resume`` continues from it (same
    config only), giving the same weights as an uninterrupted run.
    """
    import torch

    from wsipipe.models import build_model, resolve_args
    from wsipipe.models.cellularity import cellularity_loss
    from wsipipe.models.io import IMAGENET_NORMALISATION, preprocess
    from wsipipe.training.checkpoint import run_resumable_epochs
    from wsipipe.training.data import Augmentation, LabelledImage, sample_patch
    from wsipipe.training.trainer import poly_lr

    device = config.device
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    args = resolve_args("cellularity", config.args)
    network = build_model("cellularity", 1, args)
    if config.init_from:
        copy_segmentation_encoder(network, Path(config.init_from), args["seg_encoder"])
    network.to(device).train()
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # sample_patch crops image and mask together; the score has no mask, so an empty one rides along
    sources = [LabelledImage(s.name, s.image, np.zeros(s.image.shape[:2], np.uint8)) for s in samples]
    scores = torch.tensor([s.score for s in samples], dtype=torch.float32)
    augmentation = Augmentation(scale_range=(1.0, 1.0), max_rotation=0.0)  # turns and flips only
    identity = {"config": asdict(config), "images": [s.name for s in samples]}

    def train_step() -> float:
        picks = rng.integers(len(samples), size=config.batch_size)
        patches = np.stack([sample_patch(sources[i], config.tile_size, rng, augmentation)[0] for i in picks])
        x = preprocess(torch.as_tensor(patches, device=device), IMAGENET_NORMALISATION)
        optimiser.zero_grad()
        loss = cellularity_loss(network(x), scores[picks].to(device))
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    run_resumable_epochs(
        network,
        optimiser,
        rng,
        identity,
        config.epochs,
        config.steps_per_epoch,
        lambda step: poly_lr(config.lr, step, config.steps),
        train_step,
        checkpoint,
        resume,
        on_step,
    )
    return network.eval()


def score_predictions(per_image: dict[str, dict]) -> dict:
    """MAE and PK of ``{name: {"score", "prediction"}}`` (PK None when every score is the same)."""
    from wsipipe.metrics.pk import prediction_probability

    truth = [v["score"] for v in per_image.values()]
    predicted = [v["prediction"] for v in per_image.values()]
    mae = float(np.mean(np.abs(np.subtract(predicted, truth))))
    pk = float(prediction_probability(truth, predicted)) if len(set(truth)) > 1 else None
    return {"mae": mae, "pk": pk}


def run_cellularity_training(
    scores_csv: Path,
    config: CellularityTrainConfig,
    output: Path,
    folds: int = 0,
    resume: bool = False,
    half: bool = False,
    command: str = "",
    on_step: Callable[[str, dict], None] | None = None,
) -> dict:
    """Cross-validate when ``folds`` >= 2, fit on every image, write ``output``; returns its metadata.

    Finished folds and checkpoints sit beside ``output`` until it is written, so ``resume`` skips
    what is done.
    """
    from wsipipe.models.io import ModelBundle, save_model
    from wsipipe.nuclei.cellularity import predict_cellularity
    from wsipipe.training.checkpoint import discard_training_state, fit_checkpoint, resumable_folds
    from wsipipe.training.data import split_folds

    output = check_output_folder(output)
    samples = read_scores(scores_csv)
    step = (lambda run: lambda info: on_step(run, info)) if on_step else (lambda run: None)
    validation: dict = {}
    if folds:
        held_out_folds = split_folds([s.group for s in samples], folds, config.seed)

        def run_fold(k: int, checkpoint: Path) -> dict:
            held_out_indices = set(held_out_folds[k])
            held_out = [s for i, s in enumerate(samples) if i in held_out_indices]
            train = [s for i, s in enumerate(samples) if i not in held_out_indices]
            network = train_cellularity(train, config, checkpoint, resume, step(f"fold {k + 1}/{folds}"))
            bundle = ModelBundle(network, cellularity_model_metadata(config))
            per_image = {
                s.name: {"score": s.score, "prediction": predict_cellularity(bundle, s.image, config.device)}
                for s in held_out
            }
            return {"images": list(per_image), "per_image": per_image}

        done = resumable_folds(output, folds, resume, run_fold)
        per_image = {name: v for f in done for name, v in f["per_image"].items()}
        validation = {
            "method": f"{folds}-fold cross-validation by image (by group with a group column); MAE and PK of the "
            "held-out images' predictions "
            "(mean over a grid of tile-size crops)",
            **score_predictions(per_image),
            "fold_mae": [score_predictions(f["per_image"])["mae"] for f in done],
            "fold_images": [f["images"] for f in done],
            "per_image": per_image,
        }
    start = time.perf_counter()
    network = train_cellularity(samples, config, fit_checkpoint(output), resume, step("final fit"))
    scores = [s.score for s in samples]
    meta = cellularity_model_metadata(
        config,
        training={
            "command": command,
            "seed": config.seed,
            "data": {
                "scores": str(scores_csv),
                "images": [s.name for s in samples],
                "data_mpp": config.mpp,
                "score_mean": float(np.mean(scores)),
                "score_min": min(scores),
                "score_max": max(scores),
            },
            "config": asdict(config),
            "final_fit_s": round(time.perf_counter() - start, 1),
        },
        validation=validation,
    )
    save_model(output, network, meta, half=half)
    discard_training_state(output)
    return meta
