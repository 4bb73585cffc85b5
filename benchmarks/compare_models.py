"""The SCLC paper's Table 1 on the shared lung images: U-Net, Attention U-Net and the multi-scale
fusion U-Net with 2 and 4 blocks, trained on the same folds with the same schedule.

Reports parameters, pooled cross-validation mIoU / accuracy / kappa (evaluated like slide
inference: model scale, overlapping tiles, blending, compared at mask resolution), training
images/s and inference tiles/s, plus the "tumour = all detected tissue" baseline on the same
images. Defaults are a short CPU schedule (small tiles at a coarse scale); pass --tile-size,
--epochs etc. for a real comparison on a GPU. Folds keep grouped images together and
each fold's model is its last epoch (the held-out images score it, so they do not choose it).
Ends with one JSON line.

    PYTHONPATH=. python benchmarks/compare_models.py [--data ../shared/data/lung] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from wsipipe.device import resolve_device
from wsipipe.inference.engine import Runner
from wsipipe.inference.evaluate import evaluate_items
from wsipipe.metrics.semantic import ConfusionMatrix, summarise
from wsipipe.models import build_model, parameter_count
from wsipipe.models.io import ModelBundle, model_metadata
from wsipipe.training.data import read_dataset, regroup, rescaled, split_folds
from wsipipe.training.trainer import TrainConfig, train

MODELS = [
    ("U-Net", "plain-unet", {}),
    ("Attention U-Net", "attention-unet", {}),
    ("msf-unet (2 blocks)", "msf-unet", {"blocks": 2}),
    ("msf-unet (4 blocks)", "msf-unet", {"blocks": 4}),
]


def tissue_baseline(originals) -> dict:
    """Tumour = all tissue: HSV saturation above its Otsu threshold."""
    import cv2
    from skimage.filters import threshold_otsu

    cm = ConfusionMatrix(2)
    for item in originals:
        saturation = cv2.cvtColor(item.image, cv2.COLOR_RGB2HSV)[..., 1]
        cm.update((saturation > threshold_otsu(saturation)).astype(int), item.mask)
    return summarise(cm.counts, ["background", "tumour"])


def inference_tiles_per_s(model, tile: int, batch: int, device: str, repeats: int = 3) -> float:
    tiles = np.stack([np.random.default_rng(0).integers(0, 255, (tile, tile, 3), dtype=np.uint8)] * batch)
    runner = Runner(ModelBundle(model, {"input_normalisation": {"mean": [0.0] * 3, "std": [1.0] * 3}}), device, batch)
    runner(tiles)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner(tiles)
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("WSIPIPE_DATA", "../shared/data")) / "lung")
    parser.add_argument("--data-mpp", type=float, default=12.0, help="assumed µm/px of the lung images")
    parser.add_argument("--mpp", type=float, default=96.0, help="model µm/px (coarse on CPU)")
    parser.add_argument("--tile-size", type=int, default=64)
    parser.add_argument(
        "--groups",
        type=Path,
        default=Path(__file__).parents[1] / "examples" / "lung-groups.csv",
        help="images that must share a fold (the overlapping lung_04 and lung_05)",
    )
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--patches-per-epoch", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a shared machine)")
    parser.add_argument("--models", default=",".join(m[1] + (f":{m[2]['blocks']}" if m[2] else "") for m in MODELS))
    opts = parser.parse_args()
    device = str(resolve_device(opts.device))
    if device == "cpu":
        torch.set_num_threads(opts.threads)
    originals = regroup(read_dataset(opts.data), opts.groups).items
    items = rescaled(originals, opts.data_mpp / opts.mpp)
    folds = split_folds([it.group for it in items], opts.folds, opts.seed)
    classes = ["background", "tumour"]
    wanted = set(opts.models.split(","))
    rows = []
    for label, arch, args in MODELS:
        if (arch + (f":{args['blocks']}" if args else "")) not in wanted:
            continue
        cm, train_rates = np.zeros((2, 2), np.int64), []
        for k, val_idx in enumerate(folds):
            config = TrainConfig(
                architecture=arch,
                args=args,
                classes=classes,
                mpp=opts.mpp,
                tile_size=opts.tile_size,
                epochs=opts.epochs,
                patches_per_epoch=opts.patches_per_epoch,
                batch_size=opts.batch_size,
                lr=opts.lr,
                seed=opts.seed + k,
                device=device,
                channels_last=device.startswith("cuda"),
            )
            train_items = [it for i, it in enumerate(items) if i not in val_idx]
            result = train(config, train_items, [items[i] for i in val_idx], select_best=False)  # scored on these
            train_rates.append(result["images_per_s"])
            model = build_model(arch, 2, args)
            model.load_state_dict(result["state_dict"])
            bundle = ModelBundle(model.to(device).eval(), model_metadata(arch, args, classes, opts.mpp, opts.tile_size))
            cm += np.array(
                evaluate_items(
                    bundle, [originals[i] for i in val_idx], opts.data_mpp, batch_size=opts.batch_size, device=device
                )["confusion"]
            )
        metrics = summarise(cm, classes)
        row = {
            "model": label,
            "architecture": arch,
            "args": args,
            "params_m": round(parameter_count(arch, 2, args) / 1e6, 2),
            "miou": round(metrics["miou"], 4),
            "accuracy": round(metrics["accuracy"], 4),
            "kappa": round(metrics["kappa"], 4),
            "train_images_per_s": round(float(np.median(train_rates)), 2),
            "inference_tiles_per_s": round(
                inference_tiles_per_s(bundle.model, opts.tile_size, opts.batch_size, device), 2
            ),
        }
        rows.append(row)
        print(f"{label}: {row}", flush=True)
    baseline = tissue_baseline(originals)
    print("\n| model | params (M) | mIoU | accuracy | kappa | train images/s | inference tiles/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params_m']} | {r['miou']:.4f} | {r['accuracy']:.4f} | {r['kappa']:.4f} | "
            f"{r['train_images_per_s']} | {r['inference_tiles_per_s']} |"
        )
    print(
        f"| tumour = all tissue (baseline) | - | {baseline['miou']:.4f} | {baseline['accuracy']:.4f} | {baseline['kappa']:.4f} | - | - |"
    )
    print(
        f"\ndevice {device} ({opts.threads} thread(s) on CPU); {opts.folds} folds by image group ({opts.groups.name}), last epoch of each; {opts.epochs} epochs x {opts.patches_per_epoch} patches of "
        f"{opts.tile_size} px at {opts.mpp} µm/px (images assumed {opts.data_mpp} µm/px); tiles/s at batch {opts.batch_size}"
    )
    print(
        json.dumps(
            {
                "device": device,
                "folds": opts.folds,
                "epochs": opts.epochs,
                "patches_per_epoch": opts.patches_per_epoch,
                "tile_size": opts.tile_size,
                "mpp": opts.mpp,
                "baseline_miou": round(baseline["miou"], 4),
                "models": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
