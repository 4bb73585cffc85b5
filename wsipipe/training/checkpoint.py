"""Resumable training state without pickle: tensors (weights, best weights, optimiser moments,
RNG) in one safetensors file, everything else as JSON in its metadata header; and the resumable
epoch loop the nuclei and cellularity trainers share."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsipipe.errors import ModelError
from wsipipe.files import atomic_path


def save_checkpoint(path: Path, model, best_state: dict | None, optimizer, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v.cpu().contiguous() for k, v in best_state.items()})
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in opt["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"state": state, "param_groups": opt["param_groups"], "optimizer_scalars": scalars}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={"wsipipe-checkpoint": json.dumps(meta)})


def load_checkpoint(path: Path, model, optimizer) -> tuple[dict | None, dict[str, Any]]:
    """Restore model, optimiser and torch RNG in place; returns (best weights or None, state)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["wsipipe-checkpoint"])
        tensors = load_file(str(path))
    except Exception as exc:
        raise ModelError(
            f"{path}: not a usable wsipipe checkpoint ({type(exc).__name__}); delete it to start over"
        ) from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta["optimizer_scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return best, meta["state"]


def run_resumable_epochs(
    network,
    optimizer,
    rng,
    identity: dict,
    epochs: int,
    steps_per_epoch: int,
    learning_rate: Callable[[int], float],
    train_step: Callable[[], float],
    checkpoint: Path | None = None,
    resume: bool = False,
    on_step: Callable[[dict], None] | None = None,
) -> None:
    """The epoch loop of the nuclei and cellularity trainers: ``train_step()`` runs one batch and
    returns its loss, at the learning rate ``learning_rate(step)``; with ``checkpoint`` the state
    (weights, optimiser, torch and numpy ``rng`` streams) is saved after every epoch, and
    ``resume`` continues from it bit-identically. A checkpoint of another ``identity`` (config
    and data) is refused."""
    from wsipipe.errors import InvalidInputError

    first_epoch = 0
    if resume and checkpoint is not None and checkpoint.is_file():
        _, state = load_checkpoint(checkpoint, network, optimizer)
        if state.get("identity") != identity:
            raise InvalidInputError(
                f"{checkpoint}: made with other training options; drop {{resume}} to start over", parameter="resume"
            )
        first_epoch = state["epochs_done"]
        rng.bit_generator.state = state["numpy_rng"]
    for epoch in range(first_epoch, epochs):
        losses = []
        for step_in_epoch in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(epoch * steps_per_epoch + step_in_epoch)
            losses.append(train_step())
            if on_step:
                on_step(
                    {
                        "epoch": epoch + 1,
                        "step": step_in_epoch + 1,
                        "steps": steps_per_epoch,
                        "loss": float(np.mean(losses)),
                    }
                )
        if checkpoint is not None:
            state = {"identity": identity, "epochs_done": epoch + 1, "numpy_rng": rng.bit_generator.state}
            save_checkpoint(checkpoint, network, None, optimizer, state)


def fit_checkpoint(output: Path) -> Path:
    """The checkpoint of the final fit, beside the model file it will become."""
    return output.with_name(f"{output.name}.ckpt")


def resumable_folds(output: Path, folds: int, resume: bool, run_fold: Callable[[int, Path], dict]) -> list[dict]:
    """Cross-validation that survives interruption: ``run_fold(k, checkpoint)`` trains and scores
    fold ``k`` (0-based) with its own checkpoint and returns a JSON record; finished records are
    kept in ``OUTPUT.cv.json``, so ``resume`` skips their folds. Returns every fold's record."""
    from wsipipe.files import write_atomic

    record = output.with_name(f"{output.name}.cv.json")
    done = json.loads(record.read_text())["folds"] if resume and record.is_file() else []
    for k in range(len(done), folds):
        checkpoint = output.with_name(f"{output.name}.fold{k + 1}.ckpt")
        done.append(run_fold(k, checkpoint))
        write_atomic(record, json.dumps({"folds": done}))
        checkpoint.unlink(missing_ok=True)
    return done


def discard_training_state(output: Path) -> None:
    """Once the model file is written: its final-fit checkpoint and fold records go."""
    fit_checkpoint(output).unlink(missing_ok=True)
    output.with_name(f"{output.name}.cv.json").unlink(missing_ok=True)
