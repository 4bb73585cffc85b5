"""A cellularity scores CSV from the shared nuclei masks, for ``wsipipe train --model cellularity``.

    PYTHONPATH=. python benchmarks/cellularity_from_masks.py [NUCLEI_DIR] OUT_DIR [--crop 256] [--per-image 4]

Writes crops of the CPM-15 and MoNuSeg images under NUCLEI_DIR (at 0.5 µm/px) as PNGs and
``scores.csv`` (image, cellularity, group = the source image) into OUT_DIR. Each score is
``cellularity_from_masks(instances, tumour)`` with the whole crop as tumour: these images have no
tumour masks, so the score is the crop's nuclei area fraction, computed, not a pathologist's.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from wsipipe.nuclei.cellularity import write_scored_crops
from wsipipe.nuclei.data import load_nuclei_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("WSIPIPE_DATA", "../shared/data")) / "nuclei"
    parser.add_argument(
        "nuclei",
        nargs="?",
        type=Path,
        default=default,
        help=f"folder with cpm15/ and/or monuseg_train/ (default {default})",
    )
    parser.add_argument("out", type=Path, help="folder for the crops and scores.csv")
    parser.add_argument("--crop", type=int, default=256, help="crop side in px at 0.5 µm/px")
    parser.add_argument("--per-image", type=int, default=4, help="crops per image at most")
    args = parser.parse_args()
    rows = write_scored_crops(load_nuclei_dataset(args.nuclei), args.out, args.crop, args.per_image)
    scores = [score for _, score in rows]
    print(f"wrote {len(rows)} crops and {args.out / 'scores.csv'}; cellularity {min(scores):.3f} to {max(scores):.3f}")


if __name__ == "__main__":
    main()
