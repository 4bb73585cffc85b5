"""Training data: labelled image folders (``images/`` + ``masks/`` with matching names) or
tile stores with annotation masks (``wsipipe tile --annotations``); splits that never separate an
image or a slide; augmented patch sampling at the model's input size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsipipe.errors import InvalidInputError
from wsipipe.stain.augment import HEDJitter

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclass
class LabelledImage:
    name: str
    image: np.ndarray  # uint8 (h, w, 3)
    mask: np.ndarray  # uint8 class indices (h, w)
    source: str = ""  # the image or slide it comes from: evaluation reports per source
    group: str = ""  # what a split never separates: its source unless told otherwise (regroup)

    def __post_init__(self):
        self.source = self.source or self.name
        self.group = self.group or self.source


@dataclass
class Dataset:
    """Labelled items at the data's own resolution, and that resolution when the data records it."""

    items: list[LabelledImage]
    mpp: float | None
    kind: str  # "images" or "tile stores"

    @property
    def groups(self) -> list[str]:
        return [item.group for item in self.items]


def read_dataset(data: str | Path) -> Dataset:
    """A folder of ``images/`` + ``masks/``, or a tile store with masks, or a folder of such stores."""
    data = Path(data)
    stores = [data] if data.suffix == ".zarr" else sorted(p for p in data.glob("*.zarr") if p.is_dir())
    if not stores:
        pairs = find_pairs(data)
        return Dataset(read_pairs(pairs), None, "images")
    return read_tile_stores(stores)


def read_tile_stores(paths: list[Path]) -> Dataset:
    """Every tile of each store with its annotation mask; one group per store (slide)."""
    from wsipipe.store import open_tile_store

    items, mpps = [], set()
    for path in paths:
        store = open_tile_store(path)
        if "masks" not in store.group:
            raise InvalidInputError(f"{path}: the store has no masks (make it with wsipipe tile --annotations)")
        if store.mpp is None:
            raise InvalidInputError(f"{path}: the store records no µm/px")
        mpps.add(round(store.mpp, 6))
        tiles, masks = store.tiles[:], store.group["masks"][:]
        items += [LabelledImage(f"{path.stem}#{i}", tiles[i], masks[i], source=path.stem) for i in range(len(tiles))]
    if len(mpps) > 1:
        raise InvalidInputError(
            f"tile stores at different µm/px ({', '.join(map(str, sorted(mpps)))}): tile them alike"
        )
    if not items:
        raise InvalidInputError(f"{', '.join(map(str, paths))}: no tiles")
    return Dataset(items, mpps.pop(), "tile stores")


def regroup(dataset: Dataset, groups_csv: Path) -> Dataset:
    """The dataset with its images (or slides) put into the groups a CSV names: columns ``image``
    (an image's file stem, or a tile store's name) and ``group`` (e.g. the slide or patient it
    comes from). Splits then keep each group on one side; unlisted images stay groups of their own."""
    import csv

    try:
        with open(groups_csv, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{{groups_csv}} {groups_csv}: cannot read ({exc})", parameter="groups_csv") from None
    if not {"image", "group"} <= set(header):
        raise InvalidInputError(
            f"{{groups_csv}} {groups_csv}: needs columns 'image' and 'group' (has {', '.join(header) or 'none'})",
            parameter="groups_csv",
        )
    known = {item.source for item in dataset.items}
    mapping: dict[str, str] = {}
    for row in rows:
        name, group = (row["image"] or "").strip(), (row["group"] or "").strip()
        name = Path(name).stem if name not in known else name
        if name not in known:
            raise InvalidInputError(
                f"{{groups_csv}} {groups_csv}: {row['image']!r} is not one of the data's images or slides",
                parameter="groups_csv",
            )
        if not group:
            raise InvalidInputError(
                f"{{groups_csv}} {groups_csv}: {row['image']!r} has an empty group", parameter="groups_csv"
            )
        mapping[name] = group
    items = [
        LabelledImage(it.name, it.image, it.mask, it.source, mapping.get(it.source, it.group)) for it in dataset.items
    ]
    return Dataset(items, dataset.mpp, dataset.kind)


def find_pairs(data_dir: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths matched by file stem; anything unmatched is a usage error."""
    data_dir = Path(data_dir)
    images_dir, masks_dir = data_dir / "images", data_dir / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise InvalidInputError(f"{data_dir}: expected folders images/ and masks/ ({folder.name}/ is missing)")

    def by_stem(folder: Path) -> dict[str, Path]:
        return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}

    images, masks = by_stem(images_dir), by_stem(masks_dir)
    if not images:
        raise InvalidInputError(f"{images_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    unmatched = sorted(set(images) ^ set(masks))
    if unmatched:
        raise InvalidInputError(f"{data_dir}: images and masks do not match by name: {', '.join(unmatched[:5])}")
    return [(images[s], masks[s]) for s in sorted(images)]


def read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidInputError(f"{path}: cannot read image ({exc})") from None


def read_mask(path: Path) -> np.ndarray:
    """Class indices; a mask holding only 0 and 255 is binary (255 -> 1)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mask = np.array(img.convert("L") if img.mode in ("RGB", "RGBA", "LA") else img)
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidInputError(f"{path}: cannot read mask ({exc})") from None
    if mask.ndim != 2:
        raise InvalidInputError(f"{path}: a mask must have one channel")
    values = np.unique(mask)
    if values.max(initial=0) == 255 and set(values.tolist()) <= {0, 255}:
        mask = mask // 255
    return mask.astype(np.uint8)


def resize_pair(image: np.ndarray, mask: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Image by area averaging (or bilinear when enlarging), mask by nearest neighbour."""
    import cv2

    if scale == 1:
        return image, mask
    h, w = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp), cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)


def read_pairs(pairs: list[tuple[Path, Path]]) -> list[LabelledImage]:
    """Read (image, mask) files and check their sizes agree."""
    out = []
    for image_path, mask_path in pairs:
        image, mask = read_image(image_path), read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise InvalidInputError(f"{mask_path}: size {mask.shape[::-1]} differs from its image {image.shape[1::-1]}")
        out.append(LabelledImage(image_path.stem, image, mask))
    return out


def rescaled(items: list[LabelledImage], scale: float) -> list[LabelledImage]:
    """Items resized by ``scale`` (data µm/px / model µm/px)."""
    return [LabelledImage(it.name, *resize_pair(it.image, it.mask, scale), it.source, it.group) for it in items]


def split_folds(groups: list[str], folds: int, seed: int) -> list[list[int]]:
    """Item indices of each validation fold: a seeded shuffle of the groups (images or slides), so
    a group's items are never on both sides; fold sizes in groups differ by at most one."""
    names = list(dict.fromkeys(groups))
    if not 2 <= folds <= len(names):
        raise InvalidInputError(
            f"{{folds}} {folds}: needs 2 <= K <= the number of images or slides ({len(names)})", parameter="folds"
        )
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[g]: k % folds for k, g in enumerate(order)}
    return [[i for i, g in enumerate(groups) if fold_of[g] == k] for k in range(folds)]


def split_holdout(groups: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) item indices holding out about ``fraction`` of the groups (none if < 2)."""
    names = list(dict.fromkeys(groups))
    if fraction <= 0 or len(names) < 2:
        return list(range(len(groups))), []
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = min(len(names) - 1, max(1, round(len(names) * fraction)))
    held = {names[g] for g in order[:n_val]}
    return [i for i, g in enumerate(groups) if g not in held], [i for i, g in enumerate(groups) if g in held]


def colour_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 0.1) -> np.ndarray:
    """Brightness, contrast and saturation, each by up to +-``strength``."""
    x = image.astype(np.float32)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(1 - strength, 1 + strength)  # saturation
    x = (x - x.mean()) * rng.uniform(1 - strength, 1 + strength) + x.mean()  # contrast
    x = x * rng.uniform(1 - strength, 1 + strength)  # brightness
    return np.clip(x, 0, 255).astype(np.uint8)


#: Stain jitter in HED space (Tellez et al. 2018); the training loop's seeded stream drives it.
STAIN_JITTER = HEDJitter(sigma_scale=0.05, sigma_shift=0.02)


@dataclass
class Augmentation:
    scale_range: tuple[float, float] = (0.75, 1.33)
    max_rotation: float = 15.0  # degrees, on top of 90-degree turns
    colour: float = 0.1
    stain: bool = True


def sample_patch(
    item: LabelledImage, tile: int, rng: np.random.Generator, aug: Augmentation | None
) -> tuple[np.ndarray, np.ndarray]:
    """One (tile, tile) patch centred anywhere in the image (random offset), augmented by one
    affine warp (zoom, 90-degree turns plus a small rotation), flips and colour/stain jitter.
    Outside the image is mirrored."""
    import cv2

    h, w = item.mask.shape
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    angle, zoom = 0.0, 1.0
    if aug is not None:
        angle = 90.0 * rng.integers(4) + rng.uniform(-aug.max_rotation, aug.max_rotation)
        zoom = float(np.exp(rng.uniform(*np.log(aug.scale_range))))
    matrix = np.asarray(cv2.getRotationMatrix2D((cx, cy), angle, zoom), np.float64)
    matrix[:, 2] += (tile / 2 - cx, tile / 2 - cy)
    border = cv2.BORDER_REFLECT_101
    image = cv2.warpAffine(item.image, matrix, (tile, tile), flags=cv2.INTER_LINEAR, borderMode=border)
    mask = cv2.warpAffine(item.mask, matrix, (tile, tile), flags=cv2.INTER_NEAREST, borderMode=border)
    if aug is not None:
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if aug.colour:
            image = colour_jitter(image, rng, aug.colour)
        if aug.stain:
            image = STAIN_JITTER.apply(image, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def class_frequencies(items: list[LabelledImage], num_classes: int) -> np.ndarray:
    counts = np.zeros(num_classes, np.int64)
    for item in items:
        counts += np.bincount(item.mask.ravel(), minlength=num_classes)[:num_classes]
    return counts / max(counts.sum(), 1)
