"""Nuclei ground truth: CPM-15 label maps and MoNuSeg Aperio outlines, resampled to one µm/px.

CPM-15: ``imageNN.png`` (RGBA) + ``imageNN_inst.png`` (16-bit instance labels); the
magnification of each image is listed in ``README_challenge.txt`` (20x ~0.5 µm/px, 40x
~0.25 µm/px). MoNuSeg: 1000x1000 ``.tif`` at 40x with an Aperio ImageScope ``.xml`` of nucleus
outlines (read with ``wsipipe.annotations``), whose ``MicronsPerPixel`` gives the µm/px.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsipipe.errors import InvalidInputError

#: µm/px of the objective powers named in CPM-15's README.
MPP_AT_MAGNIFICATION = {20: 0.5, 40: 0.25}
#: MoNuSeg is scanned at 40x; used when an XML does not state MicronsPerPixel.
MONUSEG_DEFAULT_MPP = 0.25
#: The µm/px the classical method and the evaluation work at.
WORKING_MPP = 0.5


@dataclass(frozen=True)
class NucleiSample:
    name: str  # "cpm15/image01", "monuseg/TCGA-..."
    rgb: np.ndarray  # (H, W, 3) uint8
    instances: np.ndarray  # (H, W) int32, 0 background
    mpp: float


def resample(rgb: np.ndarray, instances: np.ndarray | None, mpp: float, target_mpp: float):
    """RGB by area averaging (or linear when enlarging) and labels by nearest neighbour."""
    import cv2

    if abs(mpp - target_mpp) / target_mpp < 1e-3:
        return rgb, instances
    scale = mpp / target_mpp
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    rgb = cv2.resize(rgb, size, interpolation=interpolation)
    if instances is not None:
        instances = resize_labels(instances, (size[1], size[0]))
    return rgb, instances


def resize_labels(instances: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """int32 labels resized to ``shape`` (H, W) by nearest neighbour (ids up to 2^24 kept exactly)."""
    import cv2

    if instances.shape == tuple(shape):
        return instances.astype(np.int32)
    resized = cv2.resize(instances.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return resized.astype(np.int32)


def read_rgb(path: Path) -> np.ndarray:
    """uint8 RGB of a PNG/TIFF image, transparent pixels composited on white."""
    from PIL import Image

    with Image.open(path) as image:
        rgba = np.asarray(image.convert("RGBA")).astype(np.int32)
    alpha = rgba[..., 3:]
    return ((rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def cpm15_magnifications(readme: Path) -> dict[str, int]:
    """``{"image01": 20, ...}`` from the challenge README's table."""
    table = re.findall(r"(image\d+)\.png\s+(\d+)x", readme.read_text(errors="replace"))
    if not table:
        raise InvalidInputError(f"{readme}: no 'imageNN.png  20x' magnification table found")
    return {name: int(power) for name, power in table}


def load_cpm15(root: Path, target_mpp: float = WORKING_MPP) -> list[NucleiSample]:
    """The CPM-15 images in ``root`` (each with its ``_inst.png``), at the README's magnifications."""
    from PIL import Image

    magnifications = cpm15_magnifications(root / "README_challenge.txt")
    samples = []
    for label_file in sorted(root.glob("*_inst.png")):
        name = label_file.name[: -len("_inst.png")]
        if name not in magnifications:
            raise InvalidInputError(f"{label_file}: {name} has no magnification in {root / 'README_challenge.txt'}")
        power = magnifications[name]
        rgb = read_rgb(root / f"{name}.png")
        with Image.open(root / f"{name}_inst.png") as image:
            instances = np.asarray(image).astype(np.int32)
        mpp = MPP_AT_MAGNIFICATION[power]
        rgb, instances = resample(rgb, instances, mpp, target_mpp)
        samples.append(NucleiSample(f"cpm15/{name}", rgb, instances, target_mpp))
    return samples


def rasterise_instances(geometries, shape: tuple[int, int]) -> np.ndarray:
    """int32 map with polygon k (1-based, in the given order; later ones on top) filled with k."""
    import cv2
    import shapely

    labels = np.zeros(shape, dtype=np.int32)
    for index, geometry in enumerate(geometries, start=1):
        for polygon in getattr(geometry, "geoms", [geometry]):
            if not isinstance(polygon, shapely.Polygon):
                continue
            ring = np.round(np.asarray(polygon.exterior.coords) - 0.5).astype(np.int32)
            cv2.fillPoly(labels, [ring], int(index))
    return labels


def load_monuseg(root: Path, target_mpp: float = WORKING_MPP, limit: int | None = None) -> list[NucleiSample]:
    """The MoNuSeg images in name order (the first ``limit`` of them when given)."""
    from wsipipe.annotations import read_annotations

    samples = []
    for xml in sorted(root.glob("*.xml"))[:limit]:
        image = xml.with_suffix(".tif")
        if not image.exists():
            continue
        with quiet_logger("wsipipe.annotations"):  # MoNuSeg outlines self-intersect by the hundred
            annotations = read_annotations(xml)
        rgb = read_rgb(image)
        instances = rasterise_instances([a.geometry for a in annotations], rgb.shape[:2])
        mpp = annotations.mpp or MONUSEG_DEFAULT_MPP
        rgb, instances = resample(rgb, instances, mpp, target_mpp)
        samples.append(NucleiSample(f"monuseg/{xml.stem}", rgb, instances, target_mpp))
    return samples


@contextmanager
def quiet_logger(logger_name: str):
    """Only errors from ``logger_name`` while inside."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_nuclei_dataset(nuclei_root: Path, target_mpp: float = WORKING_MPP) -> list[NucleiSample]:
    """Every CPM-15 and MoNuSeg image under ``nuclei_root`` (``cpm15/``, ``monuseg_train/``)."""
    nuclei_root = Path(nuclei_root)
    samples = []
    if (nuclei_root / "cpm15").is_dir():
        samples += load_cpm15(nuclei_root / "cpm15", target_mpp)
    if (nuclei_root / "monuseg_train").is_dir():
        samples += load_monuseg(nuclei_root / "monuseg_train", target_mpp)
    if not samples:
        raise InvalidInputError(f"{nuclei_root}: no cpm15/ or monuseg_train/ images found")
    return samples
