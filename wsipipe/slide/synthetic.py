"""Synthetic whole-slide images for scale tests.

Writes a pyramidal, JPEG-tiled (Big)TIFF of any size from real H&E pixels, in constant memory:
every tile is rendered on demand from a small pool of source patches and streamed to disk, so a
100 000 x 100 000 px slide needs no more memory than a 1 000 px one.

Content is a deterministic function of (seed, position): level-0 tile (i, j) shows pool patch
``p(i, j)`` in orientation ``o(i, j)`` (one of the 8 flips/90° rotations), masked by smooth,
lobed "tissue" regions on a white glass background. Level L tiles are composed from the same
patches pre-downsampled by 2**L (area averaging), so every level shows the same slide.

The first page carries an Aperio-style ImageDescription (``MPP = ...``, ``AppMag = ...``), which
openslide and tiffslide both read; every page also carries TIFF resolution tags. Each pyramid
level is its own TIFF page (not a SubIFD), as openslide requires.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import imagecodecs
import numpy as np

from wsipipe.errors import InvalidInputError, OutputError, SlideOpenError
from wsipipe.files import atomic_path, output_lock

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "examples" / "data" / "CMU-1-Small-Region.svs"
# Stop adding pyramid levels once the level fits in this many pixels (longest side).
SMALLEST_LEVEL_MAX_SIDE = 2048
POOL_SIZE = 48
BACKGROUND = np.array([242, 242, 240], np.float32)  # white glass, slightly off-white like scans
# The tissue mask is evaluated on a grid this many level pixels apart and interpolated.
MASK_STEP = 16
THUMBNAIL_MAX_SIDE = 768


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. ``levels=None`` means: halve until the level fits in ~2k px."""

    width: int
    height: int
    mpp: float = 0.25
    tile_size: int = 512
    levels: int | None = None
    quality: int = 90
    seed: int = 0
    sources: tuple[Path, ...] = ()

    def level_count(self) -> int:
        if self.levels is not None:
            return self.levels
        count = 1
        while max(self.width, self.height) >> (count - 1) > SMALLEST_LEVEL_MAX_SIDE:
            count += 1
        return count

    def level_shape(self, level: int) -> tuple[int, int]:
        """(width, height) of ``level``: level 0 divided by 2**level, rounded down."""
        return max(1, self.width >> level), max(1, self.height >> level)

    def validate(self) -> None:
        if self.width < 1 or self.height < 1:
            raise InvalidInputError(
                f"{{width}}/{{height}} must be positive, got {self.width}x{self.height}", parameter=("width", "height")
            )
        if self.tile_size < 16 or self.tile_size % 16:
            raise InvalidInputError(
                f"{{tile_size}} must be a multiple of 16 (JPEG MCUs), got {self.tile_size}", parameter="tile_size"
            )
        if not 1 <= self.quality <= 100:
            raise InvalidInputError(f"{{quality}} must be within 1..100, got {self.quality}", parameter="quality")
        if not (math.isfinite(self.mpp) and self.mpp > 0):
            raise InvalidInputError(f"{{mpp}} must be a positive number, got {self.mpp}", parameter="mpp")
        count = self.level_count()
        if count < 1:
            raise InvalidInputError(f"{{levels}} must be at least 1, got {count}", parameter="levels")
        if (self.tile_size >> (count - 1)) < 1:
            raise InvalidInputError(
                f"{{levels}} {count} is too many for {{tile_size}} {self.tile_size} "
                f"(at most {int(math.log2(self.tile_size)) + 1})",
                parameter=("levels", "tile_size"),
            )


def write_synthetic_slide(
    out: str | os.PathLike,
    spec: SyntheticSpec,
    *,
    ndpi: bool = False,
    threads: int = 2,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write the slide described by ``spec`` to ``out`` (via a temporary name, then renamed).

    ``progress`` is called with the number of tiles just written. Returns the output path.
    """
    spec.validate()
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out.parent}: cannot create the output directory ({exc.strerror})") from exc
    if ndpi:
        from wsipipe.slide.synthetic_ndpi import check_ndpi_spec, write_ndpi

        check_ndpi_spec(spec)
    renderer = TileRenderer(spec)
    try:
        # The lock also deletes the temporaries a killed writer of ``out`` left beside it.
        with output_lock(out, "another wsipipe run is writing this slide"), atomic_path(out) as temporary:
            if ndpi:
                write_ndpi(temporary, spec, renderer, threads=threads, progress=progress)
            else:
                _write_tiff(temporary, spec, renderer, threads=threads, progress=progress)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write the slide ({exc})") from exc
    return out


def total_tiles(spec: SyntheticSpec) -> int:
    """How many tiles ``write_synthetic_slide`` writes (for progress bars)."""
    tile = spec.tile_size
    total = 0
    for level in range(spec.level_count()):
        width, height = spec.level_shape(level)
        total += math.ceil(width / tile) * math.ceil(height / tile)
    return total


def aperio_description(spec: SyntheticSpec) -> str:
    """Aperio-style description: openslide's Aperio reader and tifffile parse MPP from it."""
    return (
        f"Aperio Image Library wsipipe-synthetic\r\n"
        f"{spec.width}x{spec.height} ({spec.tile_size}x{spec.tile_size}) JPEG/RGB Q={spec.quality}"
        f"|AppMag = {10.0 / spec.mpp:g}|MPP = {spec.mpp:g}|Filename = synthetic-seed{spec.seed}"
    )


def _write_tiff(path: Path, spec: SyntheticSpec, renderer: TileRenderer, *, threads: int, progress) -> None:
    import tifffile

    tile = spec.tile_size
    # Like Aperio, all pages keep NewSubfileType 0: tifffile stops a pyramid at a 'reduced' page.
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(spec.level_count()):
            if level == 1:  # Aperio layout: page 1 is a stripped thumbnail, levels follow
                tif.write(
                    renderer.thumbnail(),
                    compression="jpeg",
                    photometric="rgb",
                    subsampling=(2, 2),
                    description=f"thumbnail {spec.width}x{spec.height}",
                    metadata=None,
                )
            width, height = spec.level_shape(level)
            level_mpp = spec.mpp * (1 << level)
            pixels_per_cm = 1e4 / level_mpp
            tif.write(
                _encoded_tiles(renderer, level, spec.quality, threads, progress),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="jpeg",
                photometric="rgb",
                subsampling=(2, 2),
                resolution=(pixels_per_cm, pixels_per_cm),
                resolutionunit="CENTIMETER",
                description=aperio_description(spec) if level == 0 else f"level {level} of {width}x{height}",
                metadata=None,
            )


def _encoded_tiles(renderer: TileRenderer, level: int, quality: int, threads: int, progress) -> Iterator[bytes]:
    """JPEG bytes of every tile of ``level`` in row-major order, encoded ``threads`` at a time.

    At most ``2 * threads`` tiles are in flight, so memory stays constant.
    """
    width, height = renderer.spec.level_shape(level)
    tile = renderer.spec.tile_size
    positions = [(tx, ty) for ty in range(math.ceil(height / tile)) for tx in range(math.ceil(width / tile))]
    blank = imagecodecs.jpeg8_encode(renderer.blank_tile(), level=quality, subsampling=(2, 2))

    def encode(position: tuple[int, int]) -> bytes | bytearray:
        pixels = renderer.render(level, *position)
        if pixels is None:
            return blank
        return imagecodecs.jpeg8_encode(pixels, level=quality, subsampling=(2, 2))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: deque = deque()
        for position in positions:
            pending.append(pool.submit(encode, position))
            if len(pending) >= 2 * max(1, threads):
                yield _counted(pending.popleft().result(), progress)
        while pending:
            yield _counted(pending.popleft().result(), progress)


def _counted(data: bytes, progress) -> bytes:
    """Reports a tile before handing it over (the writer never asks past the last tile)."""
    if progress:
        progress(1)
    return data


class TileRenderer:
    """Renders any tile of any level of the synthetic slide from a fixed pool of patches."""

    def __init__(self, spec: SyntheticSpec):
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        images = [load_source(path) for path in (spec.sources or (DEFAULT_SOURCE,))]
        base = make_patch_pool(images, spec.tile_size, POOL_SIZE, rng)
        # One pool per level, pre-downsampled: tiles at level L are mosaics of these.
        self.pools = [base]
        for level in range(1, spec.level_count()):
            side = spec.tile_size >> level
            self.pools.append(np.stack([cv2.resize(p, (side, side), interpolation=cv2.INTER_AREA) for p in base]))
        self.tissue = TissueField(spec.width, spec.height, rng)

    def blank_tile(self) -> np.ndarray:
        tile = self.spec.tile_size
        return np.broadcast_to(BACKGROUND.astype(np.uint8), (tile, tile, 3)).copy()

    def thumbnail(self) -> np.ndarray:
        """The whole slide at half the smallest level or ``THUMBNAIL_MAX_SIDE`` px, whichever is smaller."""
        level = self.spec.level_count() - 1
        width, height = self.spec.level_shape(level)
        tile = self.spec.tile_size
        image = np.empty((math.ceil(height / tile) * tile, math.ceil(width / tile) * tile, 3), np.uint8)
        for ty in range(image.shape[0] // tile):
            for tx in range(image.shape[1] // tile):
                pixels = self.render(level, tx, ty)
                image[ty * tile : (ty + 1) * tile, tx * tile : (tx + 1) * tile] = (
                    self.blank_tile() if pixels is None else pixels
                )
        # Smaller than every level, so no reader can mistake it for one.
        factor = min(0.5, THUMBNAIL_MAX_SIDE / max(width, height))
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        return cv2.resize(image[:height, :width], size, interpolation=cv2.INTER_AREA)

    def render(self, level: int, tx: int, ty: int) -> np.ndarray | None:
        """RGB tile (tile_size, tile_size, 3) at ``level``, or None when it is all background."""
        spec = self.spec
        tile, scale = spec.tile_size, 1 << level
        width, height = spec.level_shape(level)
        alpha = self._tile_alpha(level, tx, ty)
        if alpha is None:
            return None
        side = tile >> level
        canvas = np.empty((tile, tile, 3), np.uint8)
        pool = self.pools[level]
        for j in range(scale):
            for i in range(scale):
                gx, gy = tx * scale + i, ty * scale + j  # level-0 tile this sub-patch stands for
                choice = _mix(spec.seed, gx, gy)
                patch = _orient(pool[choice % len(pool)], (choice >> 32) % 8)
                canvas[j * side : (j + 1) * side, i * side : (i + 1) * side] = patch
        # Outside the level the tile is padding: keep it background (readers clip it anyway).
        valid_w, valid_h = min(tile, width - tx * tile), min(tile, height - ty * tile)
        alpha[valid_h:, :] = 0
        alpha[:, valid_w:] = 0
        blended = BACKGROUND + alpha[..., None] * (canvas.astype(np.float32) - BACKGROUND)
        return np.clip(blended + 0.5, 0, 255).astype(np.uint8)

    def _tile_alpha(self, level: int, tx: int, ty: int) -> np.ndarray | None:
        """Tissue opacity (tile, tile) float32 for a tile, or None when it is all glass."""
        tile, scale = self.spec.tile_size, 1 << level
        steps = np.arange(0, tile + MASK_STEP, MASK_STEP, dtype=np.float64)
        xs = (tx * tile + steps) * scale
        ys = (ty * tile + steps) * scale
        coarse = self.tissue.alpha(xs, ys)
        if not coarse.any():
            return None
        size = tile + MASK_STEP
        fine = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(fine[:tile, :tile])


class TissueField:
    """Smooth, lobed tissue regions: a sum of Gaussian blobs perturbed by low-frequency waves."""

    def __init__(self, width: int, height: int, rng: np.random.Generator):
        side = min(width, height)
        count = int(rng.integers(4, 8))
        self.cx = rng.uniform(0.15, 0.85, count) * width
        self.cy = rng.uniform(0.15, 0.85, count) * height
        self.radius = rng.uniform(0.10, 0.22, count) * side
        waves = 4
        self.kx = rng.uniform(-1, 1, waves) * 2 * math.pi * rng.uniform(4, 12, waves) / side
        self.ky = rng.uniform(-1, 1, waves) * 2 * math.pi * rng.uniform(4, 12, waves) / side
        self.phase = rng.uniform(0, 2 * math.pi, waves)

    def alpha(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Opacity in [0, 1] at the grid ``ys x xs`` (level-0 pixel coordinates), float32."""
        x, y = xs[None, :], ys[:, None]
        field = np.zeros((len(ys), len(xs)))
        for cx, cy, r in zip(self.cx, self.cy, self.radius):
            field += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (r * r))
        for kx, ky, phase in zip(self.kx, self.ky, self.phase):
            field += 0.12 * np.sin(kx * x + ky * y + phase)
        return np.clip((field - 0.55) * 10.0, 0.0, 1.0).astype(np.float32)


def load_source(path: Path) -> np.ndarray:
    """RGB uint8 pixels of an H&E source image (a slide's level 0, a PNG or a JPEG)."""
    path = Path(path)
    if not path.is_file():
        hint = " (the default source ships with the repository; pass {sources} IMAGE)" if path == DEFAULT_SOURCE else ""
        raise SlideOpenError(f"{path}: source image not found{hint}", parameter="sources")
    try:
        if path.suffix.lower() in {".svs", ".tif", ".tiff"}:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                pixels = tif.pages[0].asarray()
        else:
            pixels = imagecodecs.imread(str(path))
    except Exception as exc:  # decoders raise many types for bad input
        raise SlideOpenError(f"{path}: cannot read the source image ({exc})") from exc
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise SlideOpenError(f"{path}: source must be 8-bit, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] < 3:
        raise SlideOpenError(f"{path}: source must be an RGB image, got shape {pixels.shape}")
    return np.ascontiguousarray(pixels[..., :3])


def make_patch_pool(images: Sequence[np.ndarray], tile: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` tissue-rich crops (count, tile, tile, 3) with mild per-patch colour jitter."""
    pool = np.empty((count, tile, tile, 3), np.uint8)
    for index in range(count):
        image = images[int(rng.integers(len(images)))]
        height, width = image.shape[:2]
        if min(height, width) < tile:  # small sources are enlarged to fit one tile
            factor = tile / min(height, width)
            image = cv2.resize(image, (math.ceil(width * factor), math.ceil(height * factor)))
            height, width = image.shape[:2]
        best, best_score = None, -1.0
        for _ in range(8):  # keep the crop with the most stained pixels
            y = int(rng.integers(height - tile + 1))
            x = int(rng.integers(width - tile + 1))
            crop = image[y : y + tile, x : x + tile]
            score = float((cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)[..., 1] > 25).mean())
            if score > best_score:
                best, best_score = crop, score
        gain = 1.0 + rng.normal(0, 0.04, 3)
        shift = rng.normal(0, 4, 3)
        assert best is not None  # every crop scores at least 0
        pool[index] = np.clip(best.astype(np.float32) * gain + shift + 0.5, 0, 255).astype(np.uint8)
    return pool


def _orient(patch: np.ndarray, orientation: int) -> np.ndarray:
    """One of the 8 symmetries of the square: rotation by 90° x k, then a mirror for k >= 4."""
    rotated = np.rot90(patch, orientation % 4)
    return rotated[:, ::-1] if orientation >= 4 else rotated


def _mix(seed: int, x: int, y: int) -> int:
    """A 64-bit hash of (seed, x, y) (splitmix64 finaliser): per-tile choices, deterministic."""
    value = (seed * 0x9E3779B97F4A7C15 + x * 0xBF58476D1CE4E5B9 + y * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    value ^= value >> 30
    value = (value * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value ^= value >> 27
    value = (value * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)
