"""The training loop: seeded patch sampling, poly learning rate, AMP on CUDA, validation by
sliding-window inference every epoch, best weights by validation mIoU, resumable checkpoints."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsipipe.errors import InvalidInputError
from wsipipe.training.data import Augmentation, LabelledImage, class_frequencies, sample_patch

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainConfig:
    architecture: str = "unet"
    args: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=lambda: ["background", "foreground"])
    mpp: float = 1.0  # the model's working µm/px
    tile_size: int = 256
    epochs: int = 10
    patches_per_epoch: int = 64
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adamw"
    loss: str = "dice-ce"
    focal_gamma: float = 2.0
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    channels_last: bool = False
    augment: bool = True


def poly_lr(base_lr: float, step: int, max_steps: int, power: float = 0.9) -> float:
    """The poly policy (SCLC eq. 3): lr = base_lr * (1 - step / max_steps) ** power."""
    return base_lr * (1 - min(step, max_steps) / max_steps) ** power


def make_optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise InvalidInputError(f"{{optimizer}} {name!r}: choose one of {', '.join(OPTIMIZERS)}", parameter="optimizer")


def validate(model, items: list[LabelledImage], config: TrainConfig, batch_size: int) -> dict:
    """Sliding-window inference on whole validation images at the model's scale."""
    from wsipipe.inference.engine import predict_tiled
    from wsipipe.inference.sliding import default_overlap
    from wsipipe.metrics.semantic import ConfusionMatrix
    from wsipipe.models.io import IMAGENET_NORMALISATION, ModelBundle

    model.eval()
    bundle = ModelBundle(
        model, {"classes": config.classes, "tile_size": config.tile_size, "input_normalisation": IMAGENET_NORMALISATION}
    )
    cm = ConfusionMatrix(len(config.classes))
    for item in items:
        probs = predict_tiled(bundle, item.image, default_overlap(config.tile_size), batch_size, config.device)
        cm.update(probs.argmax(0), item.mask)
    return cm.summary(config.classes)


def train(
    config: TrainConfig,
    train_items: list[LabelledImage],
    val_items: list[LabelledImage],
    checkpoint: Path | None = None,
    resume: bool = False,
    on_step: Callable[[dict], None] | None = None,
    select_best: bool = True,
) -> dict[str, Any]:
    """Train and return {'state_dict' (best by validation mIoU, else last), 'history',
    'best': metrics of the chosen epoch, 'images_per_s'}.

    ``select_best=False`` keeps the last epoch and only records the validation curve: when the
    validation images are the ones a figure is reported on (a cross-validation fold), choosing
    the epoch on them would inflate that figure.
    """
    from wsipipe.models import build_model
    from wsipipe.models.io import IMAGENET_NORMALISATION, preprocess
    from wsipipe.training.checkpoint import load_checkpoint, save_checkpoint
    from wsipipe.training.losses import make_loss

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = config.device
    use_cuda = device.startswith("cuda")
    model = build_model(config.architecture, len(config.classes), config.args).to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
    loss_fn = make_loss(config.loss, class_frequencies(train_items, len(config.classes)), config.focal_gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda)
    steps_per_epoch = max(1, math.ceil(config.patches_per_epoch / config.batch_size))
    max_steps = config.epochs * steps_per_epoch
    aug = Augmentation() if config.augment else None

    best_state: dict | None = None
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "train_seconds": 0.0, "images": 0}
    if resume and checkpoint is not None and checkpoint.is_file():
        best_state, state = load_checkpoint(checkpoint, model, optimizer)
        if state.get("config") != asdict(config):
            raise InvalidInputError(
                f"{checkpoint}: made with other training options; drop {{resume}} to start over", parameter="resume"
            )
        rng.bit_generator.state = state["numpy_rng"]
    for epoch in range(state["epoch"], config.epochs):
        model.train()
        started, losses = time.perf_counter(), []
        for step in range(steps_per_epoch):
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(config.lr, global_step, max_steps)
            patches = [
                sample_patch(train_items[rng.integers(len(train_items))], config.tile_size, rng, aug)
                for _ in range(config.batch_size)
            ]
            images = torch.from_numpy(np.stack([p[0] for p in patches])).to(device)
            images = preprocess(images, IMAGENET_NORMALISATION).contiguous(memory_format=memory_format)
            masks = torch.from_numpy(np.stack([p[1] for p in patches])).to(device).long()
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_cuda):
                loss = loss_fn(model(images), masks)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            if on_step:
                on_step(
                    {"epoch": epoch + 1, "step": step + 1, "steps": steps_per_epoch, "loss": float(np.mean(losses))}
                )
        state["train_seconds"] += time.perf_counter() - started
        state["images"] += steps_per_epoch * config.batch_size
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        if val_items:
            metrics = validate(model, val_items, config, config.batch_size)
            record.update(val_miou=metrics["miou"], val_accuracy=metrics["accuracy"])
            if select_best and (state["best"] is None or (metrics["miou"] or 0) > (state["best"]["val_miou"] or 0)):
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                state["best"] = record
        if on_step:
            on_step({"epoch": epoch + 1, "step": steps_per_epoch, "steps": steps_per_epoch, **record})
        state["history"].append(record)
        state["epoch"] = epoch + 1
        if checkpoint is not None:
            state["config"], state["numpy_rng"] = asdict(config), rng.bit_generator.state
            save_checkpoint(checkpoint, model, best_state, optimizer, state)
    if best_state is None:
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state["best"] = state["history"][-1] if state["history"] else None
    return {
        "state_dict": best_state,
        "history": state["history"],
        "best": state["best"],
        "images_per_s": state["images"] / max(state["train_seconds"], 1e-9),
    }
