"""Tiles of a JPEG-tiled slide level decoded on the GPU (nvJPEG through torchvision).

The CPU only slices each needed JPEG tile's compressed bytes out of the file (``TiledPages``);
``torchvision.io.decode_jpeg`` decodes the batch's tiles on the device in one call; the model
tiles are cut from them, white beyond the level's edge, and area-resampled to the model's µm/px
on the device. The same pixels as ``SlideReader.read_at_mpp`` up to the JPEG decoder's rounding
(and, at a non-integer scale, the area resampling's weights: cv2's are exact fractions).

Only JFIF (YCbCr) JPEG levels of the ``tiff_tiles`` fast path are served, read at whole level
pixels; anything else (Aperio's RGB-coded JPEGs, JPEG 2000, NDPI, a read between level pixels)
stays with the reader processes.
"""

from __future__ import annotations

import math

import numpy as np

from wsipipe.slide.base import MPP_TOLERANCE
from wsipipe.slide.tiff_tiles import PHOTOMETRIC_RGB


class JpegLevelTiles:
    """Model tiles at ``mpp`` from one JPEG level of an open slide, decoded on ``device``."""

    def __init__(self, reader, pages, level: int, mpp: float, tile: int, device: str):
        self.reader, self.pages, self.level, self.tile, self.device = reader, pages, level, tile, device
        self.downsample = reader.levels[level].downsample
        scale = mpp / reader.level_mpp(level)
        self.source = (
            tile if abs(scale - 1) <= MPP_TOLERANCE / 10 else max(1, round(tile * scale))
        )  # as read_at_mpp reads

    @classmethod
    def open(cls, reader, mpp: float, tile: int, device: str, coords: np.ndarray) -> JpegLevelTiles | None:
        """None unless the level ``mpp`` is read from is a JFIF JPEG level of the fast path and
        every one of the level-0 ``coords`` falls on a whole pixel of it."""
        pages = reader.direct_tiles
        level = reader.level_for_mpp(mpp)
        if pages is None or not pages.covers(level) or pages.jpeg_colorspaces(level) != (None, PHOTOMETRIC_RGB):
            return None
        if np.any(np.rint(coords).astype(np.int64) % reader.levels[level].downsample):
            return None
        tiles = cls(reader, pages, level, mpp, tile, device)
        return tiles if tiles.source >= tile else None  # area resampling only shrinks

    def read(self, coords: np.ndarray):
        """uint8 (n, tile, tile, 3) on the device for level-0 ``coords``."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        page = self.pages.page(self.level)
        tile_w, tile_h, across = page.tilewidth, page.tilelength, math.ceil(page.imagewidth / page.tilewidth)
        regions = [(int(x // self.downsample), int(y // self.downsample)) for x, y in np.rint(coords).astype(np.int64)]
        wanted = sorted({ty * across + tx for lx, ly in regions for ty, tx in self._tiles(page, lx, ly)})
        streams = [
            torch.frombuffer(bytearray(self.pages.jpeg_stream(self.level, index)), dtype=torch.uint8)
            for index in wanted
        ]
        decoded = dict(zip(wanted, decode_jpeg(streams, mode=ImageReadMode.RGB, device=self.device))) if wanted else {}
        size = self.source
        out = torch.full((len(regions), 3, size, size), 255, dtype=torch.uint8, device=self.device)
        for n, (lx, ly) in enumerate(regions):
            for ty, tx in self._tiles(page, lx, ly):
                pixels = decoded[ty * across + tx]
                left, top = max(tx * tile_w, lx), max(ty * tile_h, ly)
                right = min((tx + 1) * tile_w, lx + size, page.imagewidth)
                bottom = min((ty + 1) * tile_h, ly + size, page.imagelength)
                out[n, :, top - ly : bottom - ly, left - lx : right - lx] = pixels[
                    :, top - ty * tile_h : bottom - ty * tile_h, left - tx * tile_w : right - tx * tile_w
                ]
        if size != self.tile:
            weights = torch.from_numpy(area_weights(size, self.tile)).to(self.device)
            out = torch.einsum("oh,nchw,pw->ncop", weights, out.float(), weights).round_().to(torch.uint8)
        return out.permute(0, 2, 3, 1).contiguous()

    def _tiles(self, page, lx: int, ly: int) -> list[tuple[int, int]]:
        """(row, column) of the level's JPEG tiles a region at (lx, ly) touches inside the image."""
        x1, y1 = min(lx + self.source, page.imagewidth), min(ly + self.source, page.imagelength)
        x0, y0 = max(lx, 0), max(ly, 0)
        if x1 <= x0 or y1 <= y0:
            return []
        return [
            (ty, tx)
            for ty in range(y0 // page.tilelength, (y1 - 1) // page.tilelength + 1)
            for tx in range(x0 // page.tilewidth, (x1 - 1) // page.tilewidth + 1)
        ]


def area_weights(source: int, size: int) -> np.ndarray:
    """(size, source) float32: output pixel i is the mean of the source interval [i, i + 1) *
    source / size, each source pixel weighted by how much of it lies inside (cv2's INTER_AREA
    when shrinking), so ``weights @ image @ weights.T`` resamples an image by area."""
    step = source / size
    starts, ends = np.arange(size)[:, None] * step, np.arange(1, size + 1)[:, None] * step
    pixels = np.arange(source)[None, :]
    overlap = np.minimum(ends, pixels + 1) - np.maximum(starts, pixels)
    return (np.clip(overlap, 0, None) / step).astype(np.float32)


def gpu_slide_batches(tiles: JpegLevelTiles, coords: np.ndarray, positions: list, batch_size: int):
    """A slide source (``engine.slide_batches``'s) whose batches are decoded on the device."""
    for start in range(0, len(coords), batch_size):
        yield positions[start : start + batch_size], tiles.read(coords[start : start + batch_size])
