"""Per-pixel stain arithmetic in torch, run on whatever device the pixels live on.

Everything here works on flat pixel arrays ``(P, 3)`` so that one tile, a batch of tiles and a
pooled sample of a whole slide go through the same code.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from wsipipe.errors import StainError

#: A pixel is tissue when its CIE L* lightness is below this fraction of white (as StainTools).
LUMINOSITY_THRESHOLD = 0.8
#: Fewer tissue pixels than this and stains are not estimated (the image counts as background).
MIN_TISSUE_PIXELS = 100
#: Smallest optical density, so that white pixels keep a direction (as StainTools).
OD_FLOOR = 1e-6
#: Pixels an estimate uses (a seeded sample when an image or a slide has more): 2048 x 2048.
SAMPLE_PIXELS = 1 << 22
#: Pixels per step of the per-pixel passes, to bound memory on large batches.
CHUNK_PIXELS = 1 << 22

_SRGB_TO_Y = (0.212671, 0.715160, 0.072169)  # the Y row of sRGB -> XYZ (D65), as OpenCV


def _srgb_to_linear(values: np.ndarray) -> np.ndarray:
    c = values / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


SRGB_LINEAR = _srgb_to_linear(np.arange(256, dtype=np.float64))
_Y_SHARES = (SRGB_LINEAR[:, None] * np.array(_SRGB_TO_Y)).astype(np.float32)  # (256, 3): each channel's part of Y
_OD_LUT = np.maximum(-np.log(np.maximum(np.arange(256), 1) / 255.0), OD_FLOOR)


def luminance_threshold(threshold: float) -> float:
    """Relative luminance Y below which CIE L* (0-100 scale) is below ``100 * threshold``."""
    lightness = 100.0 * threshold
    if lightness > 8.0:
        return ((lightness + 16.0) / 116.0) ** 3
    return lightness / 903.3


def lookup(pixels: torch.Tensor, table: np.ndarray) -> torch.Tensor:
    """float32 ``table[pixels]`` for uint8 pixels (OpenCV's LUT on the CPU, a gather elsewhere)."""
    if pixels.device.type == "cpu":
        import cv2

        flat = pixels.reshape(1, -1).numpy()
        looked_up = cv2.LUT(flat, table.astype(np.float32).reshape(1, 256))
        return torch.from_numpy(looked_up).reshape(pixels.shape)
    table_t = torch.as_tensor(table, dtype=torch.float32, device=pixels.device)
    return torch.take(table_t, pixels.long())


def to_tile_batch(images: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """``images`` as an ``(N, H, W, 3)`` uint8 tensor, and a function giving results back.

    Accepts numpy arrays or torch tensors, one image ``(H, W, C)`` or a batch ``(N, H, W, C)``,
    channels last, uint8, C = 3 (RGB) or 4 (RGBA, composited on white as slide readers do). The
    returned function turns an ``(N, H, W, 3)`` result into the caller's type, device and rank.
    """
    is_numpy = isinstance(images, np.ndarray)
    if not is_numpy and not isinstance(images, torch.Tensor):
        raise StainError(f"expected a numpy array or torch tensor of pixels, got {type(images).__name__}")
    if str(images.dtype) not in ("uint8", "torch.uint8"):
        raise StainError(f"pixels have dtype {images.dtype}; expected uint8 RGB (0-255)")
    shape = tuple(images.shape)
    if len(shape) == 2 or (len(shape) in (3, 4) and shape[-1] == 1):
        raise StainError(f"greyscale image {shape}: stain normalisation needs RGB colour (H, W, 3)")
    if len(shape) not in (3, 4) or shape[-1] not in (3, 4):
        raise StainError(f"image shape {shape}: expected (H, W, 3), (H, W, 4) or (N, H, W, 3)")
    if 0 in shape:
        raise StainError(f"empty image {shape}")
    single = len(shape) == 3
    if is_numpy:
        with warnings.catch_warnings():  # read-only arrays are fine: inputs are never written
            warnings.simplefilter("ignore", UserWarning)
            batch = torch.from_numpy(np.ascontiguousarray(images))
    else:
        batch = images
    if single:
        batch = batch.unsqueeze(0)
    if batch.shape[-1] == 4:
        batch = composite_on_white(batch)
    source_device = None if is_numpy else images.device

    def give_back(result: torch.Tensor) -> Any:
        if single:
            result = result[0]
        if is_numpy:
            return result.cpu().numpy()
        return result.to(source_device)

    return batch, give_back


def composite_on_white(rgba: torch.Tensor) -> torch.Tensor:
    """RGBA uint8 -> RGB uint8 over a white background (alpha 255 keeps the pixel)."""
    rgb = rgba[..., :3].to(torch.int32)
    alpha = rgba[..., 3:].to(torch.int32)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).to(torch.uint8)


def tissue_mask(pixels: torch.Tensor, threshold: float = LUMINOSITY_THRESHOLD) -> torch.Tensor:
    """True where a uint8 RGB pixel (any leading shape, 3 channels last) is darker than the threshold."""
    y = luminance(pixels)
    if y.device.type == "cpu":  # numpy's single pass: torch's threads only contend on a busy CPU
        return torch.from_numpy(y.numpy() < luminance_threshold(threshold))
    return y < luminance_threshold(threshold)


def luminance(pixels: torch.Tensor) -> torch.Tensor:
    """Relative luminance Y (float32) of uint8 sRGB pixels, 3 channels last.

    On the CPU two OpenCV passes (each channel's share of Y looked up, then summed); elsewhere the
    same sum in torch (``luminance_torch``).
    """
    if pixels.device.type != "cpu":
        return luminance_torch(pixels)
    import cv2

    shares = cv2.LUT(pixels.reshape(1, -1, 3).numpy(), _Y_SHARES.reshape(1, 256, 3))
    summed = cv2.transform(shares, np.ones((1, 3), dtype=np.float32))
    return torch.from_numpy(summed).reshape(pixels.shape[:-1])


def luminance_torch(pixels: torch.Tensor) -> torch.Tensor:
    table = torch.as_tensor(_Y_SHARES, device=pixels.device)
    channels = torch.arange(3, device=pixels.device)
    return table[pixels.long(), channels].sum(dim=-1)


def optical_density(pixels: torch.Tensor) -> torch.Tensor:
    """OD = -log(I / 255) per channel, float32, with 0 read as 1 and a floor of ``OD_FLOOR``."""
    return lookup(pixels, _OD_LUT)


def od_to_rgb(od: torch.Tensor) -> torch.Tensor:
    """Optical density back to uint8 RGB, rounded and clipped."""
    return torch.exp(-od).mul_(255.0).add_(0.5).clamp_(max=255.0).to(torch.uint8)  # exp > 0


def nonneg_lasso_2(od: torch.Tensor, stain_matrix: torch.Tensor, penalty: float) -> torch.Tensor:
    """Per-pixel ``argmin_{c >= 0} 0.5 |od - c S|^2 + penalty * sum(c)`` for a 2x3 ``S``, exactly.

    With two stains this is a 2-variable convex QP on the non-negative quadrant. When the stain
    vectors are at most 90 degrees apart (always so for optical densities: ``S1 . S2 >= 0``) its
    solution is the unconstrained one if that is non-negative; otherwise the stain whose
    unconstrained concentration is negative drops out (the first one if both are) and the other
    is solved alone. Vectorised over pixels; callers check the angle.
    """
    stains = stain_matrix.detach().cpu().double().numpy()
    gram = stains @ stains.T
    if np.linalg.det(gram) < 1e-9:
        raise StainError("the two stain vectors are parallel: the tissue has a single colour")
    inverse = torch.as_tensor(np.linalg.inv(gram), dtype=od.dtype, device=od.device)
    diagonal = torch.as_tensor(np.diag(gram).copy(), dtype=od.dtype, device=od.device)
    # Rows (2, P) keep every elementwise pass contiguous; the result is returned as (P, 2).
    shifted = (stain_matrix @ od.T).sub_(penalty)  # S od - penalty
    both = inverse @ shifted  # unconstrained solution (gram is symmetric)
    alone = shifted.clamp_(min=0).div_(diagonal[:, None])  # each stain solved on its own
    zero = torch.zeros((), dtype=od.dtype, device=od.device)
    drop_first, drop_second = both[0] < 0, both[1] < 0
    first = torch.where(drop_first, zero, torch.where(drop_second, alone[0], both[0]))
    second = torch.where(drop_first, alone[1], torch.where(drop_second, zero, both[1]))
    return torch.stack([first, second]).T


def unique_colours(pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The distinct colours of uint8 RGB ``pixels`` (P, 3), on the host, and how many pixels have each.

    Every per-pixel quantity of the stain methods is a function of the pixel's colour, so the
    distinct colours weighted by their counts give the statistics of all the pixels exactly, with
    fewer rows (a 1000 x 1000 H&E image has about 17 000 to 330 000 colours).
    """
    codes, counts = np.unique(colour_codes(np.ascontiguousarray(pixels.cpu().numpy())), return_counts=True)
    return colours_of(codes), counts


def weighted_percentile(values: np.ndarray, counts: np.ndarray, q) -> np.ndarray:
    """``np.percentile(values repeated counts times, q, axis=0)`` (linear interpolation): values
    ``(n,)`` or ``(n, k)``, percentiles ``q`` a number or a list; shape ``q.shape + values.shape[1:]``."""
    values = np.asarray(values, dtype=np.float64)
    columns = values.reshape(len(counts), -1)
    ranks = np.asarray(q, dtype=np.float64) / 100.0 * (counts.sum() - 1)  # positions in the repeated column
    below, above = np.floor(ranks), np.ceil(ranks)
    out = np.empty(ranks.shape + (columns.shape[1],))
    for column in range(columns.shape[1]):
        order = np.argsort(columns[:, column])
        ends = np.cumsum(counts[order])  # repeated positions [end - count, end) hold this value
        low = columns[order[np.searchsorted(ends, below, side="right")], column]
        high = columns[order[np.searchsorted(ends, above, side="right")], column]
        out[..., column] = low + (ranks - below) * (high - low)
    return out.reshape(ranks.shape + values.shape[1:])


def sample_rows(rows: torch.Tensor, limit: int, rng: np.random.Generator) -> torch.Tensor:
    """``rows``, or ``limit`` of them drawn at random (seeded, with replacement) when more."""
    if rows.shape[0] <= limit:
        return rows
    picked = rng.integers(0, rows.shape[0], size=limit)
    return rows[torch.as_tensor(picked, device=rows.device)]


def for_each_chunk(pixels: torch.Tensor, step: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``step`` ((P, 3) uint8 -> (P, 3) uint8) to ``pixels`` in bounded chunks."""
    if pixels.shape[0] <= CHUNK_PIXELS:
        return step(pixels)
    out = torch.empty_like(pixels)
    for start in range(0, pixels.shape[0], CHUNK_PIXELS):
        out[start : start + CHUNK_PIXELS] = step(pixels[start : start + CHUNK_PIXELS])
    return out


def colour_codes(pixels: np.ndarray) -> np.ndarray:
    """Each pixel of a C-contiguous uint8 RGB array ``(..., 3)`` as one uint32, R | G << 8 | B << 16."""
    flat = pixels.reshape(-1)
    count = flat.size // 3
    codes = np.empty(count, np.uint32)
    # the little-endian 4-byte word at each pixel holds its 3 bytes and the next pixel's first
    words = np.ndarray((count - 1,), dtype="<u4", buffer=flat, strides=(3,))
    np.bitwise_and(words, 0xFFFFFF, out=codes[:-1])
    red, green, blue = (int(value) for value in flat[-3:])
    codes[-1] = red | green << 8 | blue << 16
    return codes


def colours_of(codes: np.ndarray) -> np.ndarray:
    """``colour_codes`` back to uint8 RGB ``(n, 3)``."""
    return np.stack([codes & 255, (codes >> 8) & 255, codes >> 16], axis=1).astype(np.uint8)


class ColourTable:
    """A function of each uint8 RGB pixel's colour alone, evaluated once per distinct colour.

    Normalising with fixed stain parameters maps every pixel by its colour, so a slide's hundreds
    of millions of pixels share a few hundred thousand results: on the CPU, looking them up in a
    table over the 2^24 colours is several times faster than recomputing them per pixel, and gives
    the same values (the same function of the same colours). An entry holds the mapped colour in
    its low 24 bits, then whether the colour is flagged (e.g. tissue), then whether it is filled.
    The table takes 64 MB, of memory pages only touched where colours occur.
    """

    _FLAGGED = np.uint32(1 << 24)
    _FILLED = np.uint32(1 << 25)

    def __init__(self, mapping: Callable[[torch.Tensor], torch.Tensor], flag: Callable[[torch.Tensor], torch.Tensor]):
        self._mapping = mapping  # (n, 3) uint8 -> (n, 3) uint8
        self._flag = flag  # (n, 3) uint8 -> (n,) bool
        self._entries = np.zeros(1 << 24, np.uint32)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The mapped images (a C-contiguous uint8 ``(N, H, W, 3)`` batch in, the same shape out),
        and for each image whether any of its pixels is flagged."""
        import cv2

        codes = colour_codes(images)
        entries = self._entries[codes]
        if entries.min() < self._FILLED:
            unfilled = entries < self._FILLED
            self._fill(codes[unfilled])
            entries[unfilled] = self._entries[codes[unfilled]]
        # every entry is filled now, so a flagged one is at least FILLED | FLAGGED
        flagged = entries.reshape(len(images), -1).max(axis=1) >= self._FILLED | self._FLAGGED
        rgbx = entries.view(np.uint8).reshape(-1, images.shape[-2], 4)  # little-endian: R, G, B, flags
        return cv2.cvtColor(rgbx, cv2.COLOR_RGBA2RGB).reshape(images.shape), flagged  # one pass

    def _fill(self, codes: np.ndarray) -> None:
        seen = np.zeros(1 << 24, bool)
        seen[codes] = True
        new = np.flatnonzero(seen).astype(np.uint32)  # distinct, without sorting millions of codes
        colours = torch.from_numpy(colours_of(new))
        with torch_threads(1):
            mapped = self._mapping(colours).cpu().numpy()
            flagged = self._flag(colours).cpu().numpy()
        self._entries[new] = (
            colour_codes(np.ascontiguousarray(mapped)) | np.where(flagged, self._FLAGGED, 0) | self._FILLED
        )


@contextmanager
def torch_threads(count: int):
    """Torch's intra-op threads set to ``count`` inside, restored after.

    The per-colour passes of estimation (a few hundred thousand rows) are too small to share out,
    and on a busy CPU each parallel pass waits for its slowest thread: measured 30x slower on two
    threads than on one on this project's shared machine.
    """
    before = torch.get_num_threads()
    if before == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
