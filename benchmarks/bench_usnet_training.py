"""US-Net training steps per second with the binned anchor matching, against the full anchors x boxes
IoU matrix it replaced (the baseline, run in the same process), and whether both give the same weights.

    PYTHONPATH=. python benchmarks/bench_usnet_training.py [NUCLEI_DIR] [--steps N] [--repeats N] [--device cpu|cuda]

Runs ``train_usnet`` as ``wsipipe train --model usnet`` does (base 16, 128 px crops, batch 8,
seed 0) for ``--steps`` steps with each matcher, alternating, ``--repeats`` times; quotes medians.
Ends with one line of JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import wsipipe.models.usnet as usnet
from wsipipe.nuclei.data import load_nuclei_dataset
from wsipipe.nuclei.train import NucleiTrainConfig, train_usnet


class FullMatrixMatcher:
    """The baseline: every anchor against every box (``torchvision.ops.box_iou``)."""

    def __init__(self, anchors: torch.Tensor):
        self.anchors = anchors

    def __call__(self, boxes: torch.Tensor) -> usnet.AnchorTargets:
        from torchvision.ops import box_iou

        anchors = self.anchors
        if boxes.shape[0] == 0:
            return usnet.AnchorTargets(torch.zeros(anchors.shape[0]), torch.zeros(anchors.shape[0], 4))
        iou = box_iou(usnet.to_corners(anchors), usnet.to_corners(boxes))
        best_iou, best_box = iou.max(dim=1)
        labels = torch.full((anchors.shape[0],), -1.0, device=anchors.device)
        labels[best_iou < usnet.NEGATIVE_IOU] = 0
        labels[best_iou >= usnet.POSITIVE_IOU] = 1
        best_anchor = iou.argmax(dim=0)
        labels[best_anchor] = 1
        best_box[best_anchor] = torch.arange(boxes.shape[0], device=anchors.device)
        return usnet.AnchorTargets(labels, usnet.encode(boxes[best_box], anchors))


def _option(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def timed_fit(samples, config, matcher) -> tuple[float, dict]:
    binned = usnet.AnchorMatcher
    usnet.AnchorMatcher = matcher
    try:
        start = time.perf_counter()
        network = train_usnet(samples, config)
        if config.device.startswith("cuda"):
            torch.cuda.synchronize()
        return config.steps / (time.perf_counter() - start), network.state_dict()
    finally:
        usnet.AnchorMatcher = binned


def main() -> None:
    args = [a for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("--") and not sys.argv[i - 1].startswith("--")]
    root = Path(args[0] if args else os.environ.get("WSIPIPE_DATA", "../shared/data"))
    root = root if (root / "cpm15").is_dir() else root / "nuclei"
    steps, repeats = int(_option("--steps", "20")), int(_option("--repeats", "3"))
    config = NucleiTrainConfig(
        args={"base": 16}, crop=128, epochs=1, steps_per_epoch=steps, batch_size=8, device=_option("--device", "cpu")
    )
    samples = load_nuclei_dataset(root, config.mpp)
    rates: dict[str, list[float]] = {"binned": [], "full_matrix": []}
    for _ in range(repeats):
        binned_rate, binned_state = timed_fit(samples, config, usnet.AnchorMatcher)
        full_rate, full_state = timed_fit(samples, config, FullMatrixMatcher)
        rates["binned"].append(binned_rate)
        rates["full_matrix"].append(full_rate)
    same = all(torch.equal(binned_state[k], full_state[k]) for k in binned_state)
    binned, full = statistics.median(rates["binned"]), statistics.median(rates["full_matrix"])
    print(
        f"US-Net training, {config.device}, {torch.get_num_threads()} torch thread(s), batch {config.batch_size} of "
        f"{config.crop} px: binned matching {binned:.2f} steps/s, full IoU matrix {full:.2f} steps/s "
        f"({binned / full:.2f}x; medians of {repeats} x {steps} steps); same weights: {same}"
    )
    print(
        json.dumps(
            {
                "device": config.device,
                "torch_threads": torch.get_num_threads(),
                "steps": steps,
                "repeats": repeats,
                "binned_steps_per_s": round(binned, 3),
                "full_matrix_steps_per_s": round(full, 3),
                "speedup": round(binned / full, 2),
                "same_weights": same,
            }
        )
    )


if __name__ == "__main__":
    main()
