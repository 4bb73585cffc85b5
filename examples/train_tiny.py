"""Train a tiny model for a few steps on tile stores, read with ``wsipipe.data``.

It tiles nothing itself: give it stores made by ``wsipipe tile``. With annotation masks in the
stores (``wsipipe tile --annotations``) a tiny fully convolutional net learns each pixel's label;
without, a tiny CNN learns each tile's tissue fraction. It shows the pieces a real training loop
needs: several stores as one dataset, a transform that flips image and mask together, a shuffled
``DataLoader`` with worker processes, and the slide each item came from.

    wsipipe tile examples/data/CMU-1-Small-Region.svs -o cmu.zarr --tile-size 128
    python examples/train_tiny.py cmu.zarr --steps 20 --workers 2

Prints one line per step and, last, one JSON line with the first and last losses.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn
from torch.utils.data import DataLoader

from wsipipe.data import TileStoresDataset


def flip_together(item: dict) -> dict:
    """The transform hook: a random left-right flip of the tile and its mask alike (torch's random
    stream, which DataLoader seeds differently in each worker)."""
    if torch.rand(()) < 0.5:
        item["image"] = item["image"][:, ::-1].copy()
        if "mask" in item:
            item["mask"] = item["mask"][:, ::-1].copy()
    return item


def tiny_model(classes: int | None) -> nn.Module:
    """Per-pixel logits for ``classes`` labels, or one tissue fraction per tile when None."""
    features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    if classes is not None:
        return nn.Sequential(features, nn.Conv2d(8, classes, 1))
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1), nn.Sigmoid(), nn.Flatten(0))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stores", nargs="+", help="tile stores made by wsipipe tile (same tile size, µm/px and labels)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (0: read in this process)")
    parser.add_argument("--min-tissue", type=float, default=0.0, help="only tiles with at least this tissue fraction")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    dataset = TileStoresDataset(args.stores, transform=flip_together, min_tissue=args.min_tissue)
    values = dataset.datasets[0].label_values
    classes = None if values is None else max([0, *values]) + 1  # 0: unannotated pixels
    model = tiny_model(classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    losses, tiles_seen, slides = [], 0, set()
    while len(losses) < args.steps:
        for batch in loader:
            images = batch["image"].permute(0, 3, 1, 2).float() / 255
            output = model(images)
            if classes is None:
                loss = nn.functional.mse_loss(output, batch["tissue_fraction"].float())
            else:
                loss = nn.functional.cross_entropy(output, batch["mask"].long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            tiles_seen += len(images)
            slides.update(batch["slide"])
            print(f"step {len(losses)}: loss {losses[-1]:.4f} ({len(images)} tiles)", flush=True)
            if len(losses) == args.steps:
                break
    summary = {
        "task": "tissue fraction" if classes is None else "segmentation",
        "steps": len(losses),
        "tiles_seen": tiles_seen,
        "slides": sorted(slides),
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
