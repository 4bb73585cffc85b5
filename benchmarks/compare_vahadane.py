"""Our Vahadane against StainTools' run to convergence, on every H&E image of the shared data.

Images: lung/images (7), nuclei/cpm15 (15, RGBA -> RGB), nuclei/monuseg_train (13), stain/ (5;
skimage_ihc.png is IHC, not H&E) and 1000 x 1000 crops of the H&E slides: CMU-1-Small-Region.svs
on a regular grid covering it (6) and OS-1-detail.ome.tif (1). Each image is fitted whole on the
fixed target warwick_target_p.png (the SCLC paper's) and transformed, by both methods. Prints per
image the mean absolute difference (grey levels; against StainTools as it returns images,
truncated to uint8, and against its result rounded as ours is), the H and E vector angles and
Vahadane's objective for each matrix; then median and maximum, and one JSON line.

    WSIPIPE_DATA=../shared/data python benchmarks/compare_vahadane.py [--crop 256] [--only NAME ...]

Targets: median MAD <= 1.5, maximum <= 3 grey levels, angles <= 3 degrees. The whole run learns
~50 dictionaries with SPAMS to convergence: about 10-30 min of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "stain"))

from staintools_oracle import compare_vahadane, converged_staintools  # noqa: E402

from wsipipe.slide import open_slide  # noqa: E402

DATA = Path(os.environ.get("WSIPIPE_DATA", REPO.parent / "shared" / "data"))
TARGET = "stain/warwick_target_p.png"
SLIDE_CROP = 1000


def he_image_paths(data: Path) -> dict[str, Path]:
    """Every H&E image file of the shared data, by a short name."""
    paths = {}
    for pattern in ("lung/images/*.png", "nuclei/cpm15/image??.png", "nuclei/monuseg_train/*.tif", "stain/*"):
        for path in sorted(data.glob(pattern)):
            if path.name != "skimage_ihc.png":
                paths[str(path.relative_to(data))] = path
    return paths


def slide_crops(data: Path) -> dict[str, np.ndarray]:
    """1000 x 1000 crops of the two H&E slides: CMU-1 on a grid covering it, OS-1 centred."""
    crops = {}
    for name in ("CMU-1-Small-Region.svs", "OS-1-detail.ome.tif"):
        with open_slide(data / "slides" / name) as reader:
            width, height = reader.dimensions
            columns = np.linspace(0, width - SLIDE_CROP, max(1, round(width / SLIDE_CROP))).astype(int)
            rows = np.linspace(0, height - SLIDE_CROP, max(1, round(height / SLIDE_CROP))).astype(int)
            for y in rows:
                for x in columns:
                    region = reader.read_region((int(x), int(y)), 0, (SLIDE_CROP, SLIDE_CROP))
                    crops[f"slides/{name}@{x},{y}"] = np.ascontiguousarray(region)
    return crops


def load_rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))


def centre_crop(image: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return image
    h, w = image.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def he_images(data: Path, crop: int | None = None, only: list[str] | None = None) -> dict[str, np.ndarray]:
    """The comparison's images (centre-cropped to ``crop`` px when given), optionally only those
    whose name contains one of ``only``."""

    def wanted(name: str) -> bool:
        return not only or any(part in name for part in only)

    images = {name: centre_crop(load_rgb(path), crop) for name, path in he_image_paths(data).items() if wanted(name)}
    images.update({name: centre_crop(crop_, crop) for name, crop_ in slide_crops(data).items() if wanted(name)})
    return images


def summary(rows: list[dict]) -> dict:
    def column(key):
        return [row[key] for row in rows]

    return {
        "images": len(rows),
        "mad_median": round(statistics.median(column("mad")), 3),
        "mad_max": round(max(column("mad")), 3),
        "mad_rounded_median": round(statistics.median(column("mad_rounded")), 3),
        "mad_rounded_max": round(max(column("mad_rounded")), 3),
        "angle_h_max": round(max(column("angle_h")), 3),
        "angle_e_max": round(max(column("angle_e")), 3),
        "angle_median": round(statistics.median(column("angle_h") + column("angle_e")), 3),
        "objective_ours_lower_or_equal": sum(
            row["objective"]["ours"] <= row["objective"]["staintools"] * (1 + 1e-6) for row in rows
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=None, help="centre-crop every image to this many px")
    parser.add_argument("--only", nargs="*", default=None, help="only images whose name contains one of these")
    args = parser.parse_args()
    images = he_images(DATA, args.crop, args.only)
    target = load_rgb(DATA / TARGET)
    start = time.perf_counter()
    rows = []
    with converged_staintools() as staintools:
        for name, image in images.items():  # one at a time: figures print as they come
            row = compare_vahadane(staintools, {name: image}, target)[0]
            objective = row["objective"]
            print(
                f"{name:58s} {row['pixels']:>8d} px tissue {row['tissue_fraction']:.2f}  MAD {row['mad']:.2f} "
                f"(rounded {row['mad_rounded']:.2f})  angles H {row['angle_h']:.2f} E {row['angle_e']:.2f} deg  "
                f"objective ours {objective['ours']:.6f} StainTools {objective['staintools']:.6f}",
                flush=True,
            )
            rows.append(row)
    result = summary(rows)
    print(
        f"{result['images']} images: MAD median {result['mad_median']:.2f}, max {result['mad_max']:.2f} grey levels "
        f"(targets <= 1.5, <= 3); against StainTools rounded: median {result['mad_rounded_median']:.2f}, "
        f"max {result['mad_rounded_max']:.2f}; angles max H {result['angle_h_max']:.2f}, E {result['angle_e_max']:.2f} "
        f"degrees (target <= 3); our objective lower or equal on {result['objective_ours_lower_or_equal']} images"
    )
    print(
        json.dumps(
            {
                **result,
                "crop": args.crop,
                "target": TARGET,
                "seconds": round(time.perf_counter() - start, 1),
                "per_image": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
