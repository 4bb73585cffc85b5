"""Train US-Net on nuclei instance maps (CPM-15, MoNuSeg): what ``wsipipe train --model usnet`` runs.

Training samples random crops (flips, 90° turns, colour and HED stain jitter) from
``NucleiSample`` images at the model's µm/px, optimises ``USNetLoss`` with Adam under a cosine
learning-rate schedule, and checkpoints every epoch so an interrupted run resumes exactly.
``run_nuclei_training`` adds k-fold cross-validation by image (AJI, PQ of the held-out images,
scored with the same instance extraction ``wsipipe nuclei --model`` uses) and the final fit on
every image, chooses each fit's instance thresholds on its training images
(``calibrate_instances``), and writes the model file with its command, seed, thresholds and figures.
With a normalised view (``training_view``) the model records its training images' mean stain
parameters, and at inference the network also sees every input mapped onto them (training itself
sees the images as they are); calibration and cross-validation scores run the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsipipe.errors import InvalidInputError
from wsipipe.nuclei.data import NucleiSample, load_nuclei_dataset


@dataclass(frozen=True)
class NucleiTrainConfig:
    args: dict
    mpp: float = 0.5
    crop: int = 128
    epochs: int = 30
    steps_per_epoch: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    alpha: float = 1.0
    beta: float = 1.0
    seed: int = 0
    device: str = "cpu"

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def nuclei_model_metadata(args: dict, mpp: float, tile_size: int, **extra) -> dict:
    from wsipipe.models.io import model_metadata

    return model_metadata("usnet", args, ["nucleus"], mpp, tile_size, **extra)


def _crop(sample: NucleiSample, size: int, rng: np.random.Generator):
    from wsipipe.training.data import colour_jitter

    height, width = sample.instances.shape
    pad_y, pad_x = max(0, size - height), max(0, size - width)
    rgb = np.pad(sample.rgb, ((0, pad_y), (0, pad_x), (0, 0)), constant_values=255)
    labels = np.pad(sample.instances, ((0, pad_y), (0, pad_x)))
    y = int(rng.integers(0, rgb.shape[0] - size + 1))
    x = int(rng.integers(0, rgb.shape[1] - size + 1))
    rgb, labels = rgb[y : y + size, x : x + size], labels[y : y + size, x : x + size]
    turns = int(rng.integers(0, 4))
    rgb, labels = np.rot90(rgb, turns), np.rot90(labels, turns)
    if rng.random() < 0.5:
        rgb, labels = rgb[:, ::-1], labels[:, ::-1]
    return colour_jitter(np.ascontiguousarray(rgb), rng, 0.1), np.ascontiguousarray(labels)


def _cosine_lr(config: NucleiTrainConfig, step: int) -> float:
    return config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))


def train_usnet(
    samples: list[NucleiSample],
    config: NucleiTrainConfig,
    checkpoint: Path | None = None,
    resume: bool = False,
    on_step: Callable[[dict], None] | None = None,
):
    """A US-Net trained on ``samples``; returns it in eval mode.

    With ``checkpoint``, the state is saved after every epoch; ``resume`` continues from it (same
    config only), giving the same weights as an uninterrupted run.
    """
    import torch

    from wsipipe.models import build_model, resolve_args
    from wsipipe.models.io import IMAGENET_NORMALISATION, preprocess
    from wsipipe.models.usnet import USNetLoss
    from wsipipe.training.checkpoint import run_resumable_epochs
    from wsipipe.training.data import STAIN_JITTER

    device = config.device
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    network = build_model("usnet", 1, resolve_args("usnet", config.args)).to(device)
    network.train()
    anchors = network.anchors(config.crop, config.crop, device=device)
    loss_fn = USNetLoss(alpha=config.alpha, beta=config.beta)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.lr)
    identity = {"config": asdict(config), "images": [s.name for s in samples]}

    def train_step() -> float:
        crops = [_crop(samples[int(rng.integers(len(samples)))], config.crop, rng) for _ in range(config.batch_size)]
        rgb = STAIN_JITTER.apply(np.stack([c[0] for c in crops]), rng)
        x = preprocess(torch.as_tensor(rgb, device=device), IMAGENET_NORMALISATION)
        labels = torch.as_tensor(np.stack([c[1] for c in crops]).astype(np.int64), device=device)
        optimiser.zero_grad()
        loss = loss_fn(network(x), labels, anchors)["loss"]
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
        lambda step: _cosine_lr(config, step),
        train_step,
        checkpoint,
        resume,
        on_step,
    )
    return network.eval()


#: The instance settings ``calibrate_instances`` chooses from: ``usnet_instances`` arguments, and
#: ``views`` (``usnet_forward``: 8 averages the segmentation over turns and mirrors, 8 times the
#: network's work). Of equal points the first wins, so the cheaper and simpler ones come first.
#: ``core`` only matters to a model with a distance output, so only such a model is tried on it.
INSTANCE_GRID: dict[str, tuple[Any, ...]] = {
    "score_threshold": (0.3, 0.4, 0.5),
    "foreground": (0.3, 0.4, 0.5),
    "nms_iou": (0.2, 0.3),
    "min_pixels": (0, 24),
    "compactness": (0.0, 0.01),
    "views": (1, 8),
    "core": (None, 0.3, 0.5),
}


#: What ``wsipipe train --model usnet --normalised-view`` offers: none, or Reinhard's colour
#: statistics (the stain-matrix methods' vectors do not average into one target).
NORMALISED_VIEW_METHODS = ("none", "reinhard")


def training_view(samples: list[NucleiSample], method: str) -> dict | None:
    """The ``normalised_view`` record of a model fitted on ``samples`` (None for ``none``):
    ``method``'s parameters of each image (estimated as inference estimates an input), averaged."""
    if method == "none":
        return None
    from wsipipe.stain import StainParams, get_normalizer

    normaliser = get_normalizer(method)
    estimates = [normaliser.estimate(sample.rgb) for sample in samples]
    mean = {key: np.mean([e.array(key) for e in estimates], axis=0).tolist() for key in estimates[0].values}
    return {"method": method, "target": StainParams(method, mean).to_dict()}


def calibrate_instances(
    network, config: NucleiTrainConfig, samples: list[NucleiSample], view: dict | None = None
) -> dict:
    """The ``INSTANCE_GRID`` point with the best mean of AJI and PQ on ``samples`` (the fit's own
    training images): the segmentation and detection scores of a briefly trained network are not
    calibrated probabilities, so 0.5 is not their natural cut. Each image runs through the network
    once per ``views`` value, and through the watershed once per point less its ``min_pixels``
    (which only drops instances from the result). ``view``: the fit's ``training_view`` record."""
    import itertools

    from wsipipe.models.io import ModelBundle
    from wsipipe.models.usnet import usnet_instances
    from wsipipe.nuclei.stage import split_views, usnet_forward
    from wsipipe.postprocess.instances import drop_small

    bundle = ModelBundle(network, nuclei_model_metadata(config.args, config.mpp, config.crop, normalised_view=view))
    has_distance = getattr(network, "distance", None) is not None
    grid = {name: values for name, values in INSTANCE_GRID.items() if name != "core" or has_distance}
    outputs = {}
    for views in grid["views"]:
        forward = usnet_forward(bundle, views)
        outputs[views] = [(sample.instances, forward(sample.rgb)) for sample in samples]

    def key(point: dict) -> tuple:
        return tuple(point[name] for name in grid)

    scores: dict[tuple, float] = {}  # mean of AJI and PQ per point
    watershed_grid = {name: values for name, values in grid.items() if name != "min_pixels"}
    for values in itertools.product(*watershed_grid.values()):
        watershed_point = dict(zip(watershed_grid, values))
        views, settings = split_views(watershed_point)
        unfiltered = [(truth, usnet_instances(*out, **settings)) for truth, out in outputs[views]]
        for min_pixels in grid["min_pixels"]:
            qualities = [instance_quality(truth, drop_small(labels, min_pixels)) for truth, labels in unfiltered]
            scores[key({**watershed_point, "min_pixels": min_pixels})] = float(
                np.mean([(q["aji"] + q["pq"]) / 2 for q in qualities])
            )
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    return max(points, key=lambda point: scores[key(point)])  # the first of equals


def instance_quality(truth: np.ndarray, labels: np.ndarray) -> dict:
    """AJI, PQ, DQ and SQ of instance ``labels`` against ``truth``."""
    from wsipipe.metrics.instance import aji, panoptic_quality

    quality = panoptic_quality(truth, labels)
    return {"aji": float(aji(truth, labels)), "pq": float(quality.pq), "dq": float(quality.dq), "sq": float(quality.sq)}


def score_instances(
    network,
    config: NucleiTrainConfig,
    samples: list[NucleiSample],
    thresholds: dict | None = None,
    view: dict | None = None,
) -> dict:
    """Mean AJI and PQ (and their per-image values) of ``network`` on ``samples``, instances cut at
    ``thresholds`` (an ``INSTANCE_GRID`` point; None: the defaults), with the normalised view
    ``view`` (a ``training_view`` record; None: none)."""
    from wsipipe.models.io import ModelBundle
    from wsipipe.nuclei.stage import usnet_segmenter

    meta = nuclei_model_metadata(config.args, config.mpp, config.crop, instances=thresholds or {}, normalised_view=view)
    segment = usnet_segmenter(ModelBundle(network, meta))
    per_image = {sample.name: instance_quality(sample.instances, segment(sample.rgb)) for sample in samples}
    return {key: float(np.mean([v[key] for v in per_image.values()])) for key in ("aji", "pq", "dq", "sq")} | {
        "per_image": per_image
    }


def run_nuclei_training(
    data_dir: Path,
    config: NucleiTrainConfig,
    output: Path,
    folds: int = 0,
    resume: bool = False,
    half: bool = False,
    command: str = "",
    on_step: Callable[[str, dict], None] | None = None,
    normalised_view: str = "none",
) -> dict:
    """Cross-validate when ``folds`` >= 2, fit on every image, write ``output``; returns its metadata.
    ``normalised_view``: a method of ``NORMALISED_VIEW_METHODS`` (``training_view``).

    ``data_dir`` holds ``cpm15/`` and/or ``monuseg_train/`` (see ``wsipipe.nuclei.data``). Folds
    group whole images (``image_folds``). Finished folds and checkpoints sit beside ``output``
    until it is written, so ``resume`` skips what is done.
    """
    from wsipipe.models.io import save_model
    from wsipipe.nuclei.evaluate import image_folds
    from wsipipe.training.checkpoint import discard_training_state, fit_checkpoint, resumable_folds

    output = Path(output)
    if not output.parent.is_dir():
        raise InvalidInputError(f"-o {output}: folder {output.parent} does not exist")
    if normalised_view not in NORMALISED_VIEW_METHODS:
        raise InvalidInputError(
            f"{{normalised_view}} {normalised_view!r}: expected one of {', '.join(NORMALISED_VIEW_METHODS)}",
            parameter="normalised_view",
        )
    samples = load_nuclei_dataset(data_dir, config.mpp)
    if folds > len(samples):
        raise InvalidInputError(f"{{folds}} {folds}: only {len(samples)} images in {data_dir}", parameter="folds")
    step = (lambda run: lambda info: on_step(run, info)) if on_step else (lambda run: None)
    validation: dict = {}
    if folds >= 2:
        fold_of = np.asarray(image_folds([s.name for s in samples], folds, config.seed))

        def run_fold(k: int, checkpoint: Path) -> dict:
            train = [s for s, f in zip(samples, fold_of) if f != k]
            held_out = [s for s, f in zip(samples, fold_of) if f == k]
            network = train_usnet(train, config, checkpoint, resume, step(f"fold {k + 1}/{folds}"))
            view = training_view(train, normalised_view)
            thresholds = calibrate_instances(network, config, train, view)
            return {
                "images": [s.name for s in held_out],
                "instances": thresholds,
                **score_instances(network, config, held_out, thresholds, view),
            }

        done = resumable_folds(output, folds, resume, run_fold)
        validation = {
            "method": f"{folds}-fold cross-validation by image, AJI and PQ of the held-out images, instance "
            "settings chosen on each fold's training images",
            **{key: float(np.mean([f[key] for f in done])) for key in ("aji", "pq", "dq", "sq")},
            **{f"fold_{key}": [f[key] for f in done] for key in ("aji", "pq", "instances")},
            "per_image": {name: v for f in done for name, v in f["per_image"].items()},
        }
    start = time.perf_counter()
    network = train_usnet(samples, config, fit_checkpoint(output), resume, step("final fit"))
    fit_seconds = round(time.perf_counter() - start, 1)
    view = training_view(samples, normalised_view)
    meta = nuclei_model_metadata(
        config.args,
        config.mpp,
        config.crop,
        normalised_view=view,
        instances=calibrate_instances(network, config, samples, view),
        training={
            "command": command,
            "seed": config.seed,
            "data": {
                "dir": str(data_dir),
                "images": [s.name for s in samples],
                "data_mpp": config.mpp,
                "nuclei": int(sum(len(np.unique(s.instances)) - 1 for s in samples)),
            },
            "config": asdict(config),
            "final_fit_s": fit_seconds,
        },
        validation=validation,
    )
    save_model(output, network, meta, half=half)
    discard_training_state(output)
    return meta
