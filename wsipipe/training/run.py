"""``wsipipe train`` end to end: read labelled images or tile stores, optional k-fold
cross-validation by image or slide, the final fit, and the model file with its metadata
(command, seed, data summary, metrics)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from wsipipe.errors import InvalidInputError
from wsipipe.files import check_output_folder
from wsipipe.training.checkpoint import discard_training_state, fit_checkpoint, resumable_folds
from wsipipe.training.data import read_dataset, regroup, rescaled, split_folds, split_holdout
from wsipipe.training.trainer import TrainConfig, train


def _bundle(config: TrainConfig, state_dict: dict):
    from wsipipe.models import build_model
    from wsipipe.models.io import ModelBundle, model_metadata

    model = build_model(config.architecture, len(config.classes), config.args)
    model.load_state_dict(state_dict)
    meta = model_metadata(config.architecture, config.args, config.classes, config.mpp, config.tile_size)
    return ModelBundle(model.eval(), meta)


def _unit(dataset) -> str:
    unit = "image" if dataset.kind == "images" else "slide"
    return f"{unit} group" if any(it.group != it.source for it in dataset.items) else unit


def _names(items, indices) -> list[str]:
    """The images (or slides, for tile stores) behind ``indices``, each once."""
    return list(dict.fromkeys(items[i].source for i in indices))


def run_training(
    data_dir: Path,
    config: TrainConfig,
    output: Path,
    data_mpp: float | None,
    folds: int = 0,
    val_fraction: float = 0.2,
    resume: bool = False,
    half: bool = False,
    command: str = "",
    on_step: Callable[[str, dict], None] | None = None,
    mpp_assumed: bool = False,
    groups_csv: Path | None = None,
) -> dict:
    """Train, cross-validate when ``folds`` >= 2 (then fit on all images), save ``output``.

    ``data_mpp``: µm/px of image folders (None: the model's); tile stores record their own.
    ``groups_csv``: images or slides that must share a fold (``training.data.regroup``).
    Returns the model metadata written. Checkpoints sit beside ``output`` until it is written.
    """
    from wsipipe.inference.evaluate import evaluate_items
    from wsipipe.metrics.semantic import summarise
    from wsipipe.models.io import model_metadata, save_model

    output = check_output_folder(output)
    dataset = read_dataset(data_dir)
    if groups_csv is not None:
        dataset = regroup(dataset, groups_csv)
    if dataset.mpp is not None:
        if data_mpp is not None and abs(data_mpp - dataset.mpp) > 1e-6 * dataset.mpp:
            raise InvalidInputError(
                f"{{data_mpp}} {data_mpp}: the tile stores record {dataset.mpp} µm/px", parameter="data_mpp"
            )
        data_mpp, mpp_assumed = dataset.mpp, False
    elif data_mpp is None:
        data_mpp = config.mpp
    items = rescaled(dataset.items, data_mpp / config.mpp)
    groups = dataset.groups
    top = max(int(i.mask.max()) for i in items)
    if top >= len(config.classes):
        raise InvalidInputError(
            f"{data_dir}: masks hold class {top} but {{classes}} names only {len(config.classes)}", parameter="classes"
        )
    step = (lambda run: lambda info: on_step(run, info)) if on_step else (lambda run: None)
    validation: dict = {}
    if folds >= 2:
        fold_indices = split_folds(groups, folds, config.seed)

        def run_fold(k: int, checkpoint: Path) -> dict:
            val_idx = fold_indices[k]
            train_items = [it for i, it in enumerate(items) if i not in val_idx]
            val_items = [items[i] for i in val_idx]
            # the held-out images are what the fold is scored on, so they do not choose its epoch
            result = train(
                config, train_items, val_items, checkpoint, resume, step(f"fold {k + 1}/{folds}"), select_best=False
            )
            metrics = evaluate_items(
                _bundle(config, result["state_dict"]),
                [dataset.items[i] for i in val_idx],
                data_mpp,
                device=config.device,
            )
            return {"images": _names(items, val_idx), "best_epoch": result["best"]["epoch"], **metrics}

        done = resumable_folds(output, folds, resume, run_fold)
        confusion = np.sum([np.array(f["confusion"]) for f in done], axis=0)
        validation = {
            "method": f"{folds}-fold cross-validation by {_unit(dataset)}, metrics of the held-out {_unit(dataset)}s",
            **summarise(confusion, config.classes),
            "fold_miou": [f["miou"] for f in done],
            "per_image": {k: v for f in done for k, v in f["per_image"].items()},
        }
        train_idx, val_idx = list(range(len(items))), list[int]()
    else:
        train_idx, val_idx = split_holdout(groups, val_fraction, config.seed)
    result = train(
        config,
        [items[i] for i in train_idx],
        [items[i] for i in val_idx],
        fit_checkpoint(output),
        resume,
        step("final fit"),
    )
    if val_idx:
        metrics = evaluate_items(
            _bundle(config, result["state_dict"]), [dataset.items[i] for i in val_idx], data_mpp, device=config.device
        )
        validation = {"method": f"held-out {_unit(dataset)}s", "images": _names(items, val_idx), **metrics}
    meta = model_metadata(
        config.architecture,
        config.args,
        config.classes,
        config.mpp,
        config.tile_size,
        training={
            "command": command,
            "seed": config.seed,
            "data": {
                "dir": str(data_dir),
                "kind": dataset.kind,
                "images": _names(items, train_idx),
                "groups": {it.source: it.group for it in items if it.group != it.source},
                "data_mpp": data_mpp,
                "data_mpp_assumed": mpp_assumed,
                "class_pixels": np.bincount(
                    np.concatenate([items[i].mask.ravel() for i in train_idx]), minlength=len(config.classes)
                ).tolist(),
            },
            "config": asdict(config),
            "best_epoch": result["best"]["epoch"] if result["best"] else None,
            "history": result["history"],
            "images_per_s": result["images_per_s"],
        },
        validation=validation,
    )
    model = _bundle(config, result["state_dict"]).model
    save_model(output, model, meta, half=half)
    discard_training_state(output)
    return meta
