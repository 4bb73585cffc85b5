"""The NDPI-flavoured synthetic slide (``wsipipe synth --ndpi``).

Hamamatsu NDPI stores each pyramid level as ONE baseline JPEG (a single TIFF strip) with restart
markers; openslide treats each restart interval as a tile, finds intervals through the private
tag 65426 (MCU starts), and recognises the file by tag 65420. A whole-level JPEG cannot be
encoded in constant memory by imagecodecs or Pillow, so it is assembled: every tile is encoded
on its own (Pillow, standard Huffman tables, one restart interval per MCU row), and the
intervals are re-ordered into the level's raster order with renumbered RST markers. All tiles
share quantisation and Huffman tables, so the intervals are valid parts of the big JPEG.

Limits (of the format or this approach): each level's width must be a multiple of the tile
size and its height a multiple of 8 (one interval = tile width x one MCU row; intervals may not
wrap rows); no side may exceed 65 500 px (baseline JPEG); the file must stay under 4 GiB
(classic TIFF offsets; real NDPIs use a vendor hack beyond that).
"""

from __future__ import annotations

import io
import math
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from wsipipe.errors import InvalidInputError, OutputError

NDPI_FORMAT_FLAG, NDPI_SOURCELENS, NDPI_XOFFSET, NDPI_YOFFSET = 65420, 65421, 65422, 65423
NDPI_FOCAL_PLANE, NDPI_MCU_STARTS = 65424, 65426
JPEG_MAX_SIDE = 65500
# 4:2:2 chroma subsampling: 16 x 8 px MCUs. Not 4:2:0: libjpeg's fancy upsampling of 4:2:0 reads
# one MCU row ahead, past the end of the single interval openslide decodes as a tile.
MCU_W, MCU_H = 16, 8
SHORT, LONG, RATIONAL, SLONG, FLOAT = 3, 4, 5, 9, 11
RESTART = re.compile(rb"\xff[\xd0-\xd7]")


def check_ndpi_spec(spec) -> None:
    """Refuse sizes an NDPI-style level JPEG cannot have, naming the nearest valid ones."""
    levels = spec.level_count()
    step_w = spec.tile_size << (levels - 1)
    step_h = MCU_H << (levels - 1)
    if spec.width % step_w or spec.height % step_h:
        raise InvalidInputError(
            f"{{ndpi}} with {levels} levels and {{tile_size}} {spec.tile_size} needs {{width}} a multiple of "
            f"{step_w} and {{height}} a multiple of {step_h} (e.g. {math.ceil(spec.width / step_w) * step_w} x "
            f"{math.ceil(spec.height / step_h) * step_h})",
            parameter=("ndpi", "tile_size", "width", "height"),
        )
    if max(spec.width, spec.height) > JPEG_MAX_SIDE:
        raise InvalidInputError(
            f"{{ndpi}} slides are at most {JPEG_MAX_SIDE} px a side (one JPEG per level)", parameter="ndpi"
        )


def write_ndpi(path: Path, spec, renderer, *, progress=None, threads: int = 2) -> None:
    """Write ``spec`` as an NDPI-style TIFF (check the size first with ``check_ndpi_spec``)."""
    levels = []
    with open(path, "wb") as fh:
        # Like real NDPIs: the first-IFD offset is followed by 4 zero bytes (tifffile reads 8).
        fh.write(b"II*\x00" + bytes(8))  # offset patched at the end
        for level in range(spec.level_count()):
            offset = fh.tell()
            starts = _write_level_jpeg(fh, spec, renderer, level, threads, progress)
            levels.append((level, offset, fh.tell() - offset, starts))
        first_ifd = _write_ifds(fh, spec, levels)
        if fh.tell() >= 2**32:
            raise OutputError(f"{path}: {{ndpi}} output would exceed 4 GiB (classic TIFF offsets)", parameter="ndpi")
        fh.seek(4)
        fh.write(struct.pack("<I", first_ifd))


def _encode(pixels: np.ndarray, quality: int, tile: int) -> tuple[bytes, list[bytes]]:
    """(header up to and including SOS, entropy-coded segments one per MCU row) of one tile."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(
        buffer,
        format="JPEG",
        quality=quality,
        subsampling=1,
        optimize=False,
        restart_marker_blocks=tile // MCU_W,
    )
    data = buffer.getvalue()
    position = 2
    while data[position + 1] != 0xDA:  # walk marker segments to the start of scan
        position += 2 + struct.unpack(">H", data[position + 2 : position + 4])[0]
    header_end = position + 2 + struct.unpack(">H", data[position + 2 : position + 4])[0]
    segments = RESTART.split(data[header_end : data.rindex(b"\xff\xd9")])
    if len(segments) != tile // MCU_H:
        raise RuntimeError(f"expected {tile // MCU_H} restart intervals per tile, found {len(segments)}")
    return data[:header_end], segments


def _with_size(header: bytes, width: int, height: int) -> bytes:
    """The tile header with the SOF0 frame size set to the level's."""
    sof = header.index(b"\xff\xc0")
    return header[: sof + 5] + struct.pack(">HH", height, width) + header[sof + 9 :]


def _write_level_jpeg(fh, spec, renderer, level, threads, progress) -> list[int]:
    """Stream one level as a single JPEG; returns each restart interval's offset in it."""
    width, height = spec.level_shape(level)
    tile = spec.tile_size
    across, mcu_rows = width // tile, height // MCU_H
    base, starts, written = fh.tell(), [], 0
    total = across * mcu_rows
    reference_header = None
    blank = _encode(renderer.blank_tile(), spec.quality, tile)

    def encode(tx_ty):
        pixels = renderer.render(level, *tx_ty)
        return blank if pixels is None else _encode(pixels, spec.quality, tile)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for ty in range(math.ceil(height / tile)):
            row = list(pool.map(encode, [(tx, ty) for tx in range(across)]))
            for header, _ in row:
                if reference_header is None:
                    reference_header = header
                    fh.write(_with_size(header, width, height))
                elif header != reference_header:
                    raise RuntimeError("tiles were encoded with different JPEG tables")
            if progress:
                progress(len(row))
            for mcu_row in range(min(tile // MCU_H, mcu_rows - ty * (tile // MCU_H))):
                for _, segments in row:
                    starts.append(fh.tell() - base)
                    fh.write(segments[mcu_row])
                    written += 1
                    fh.write(b"\xff\xd9" if written == total else bytes((0xFF, 0xD0 + (written - 1) % 8)))
    return starts


def _write_ifds(fh, spec, levels) -> int:
    """Write one IFD per level (largest first, as openslide expects); returns the first's offset."""
    if fh.tell() % 2:
        fh.write(b"\x00")
    first = fh.tell()
    for index, (level, offset, length, starts) in enumerate(levels):
        width, height = spec.level_shape(level)
        pixels_per_cm = 1e4 / (spec.mpp * (1 << level))
        entries = [
            (256, LONG, [width]),
            (257, LONG, [height]),
            (258, SHORT, [8, 8, 8]),
            (259, SHORT, [7]),  # JPEG
            (262, SHORT, [6]),  # YCbCr
            (273, LONG, [offset]),
            (277, SHORT, [3]),
            (278, LONG, [height]),  # one strip per level
            (279, LONG, [length]),
            (282, RATIONAL, [_rational(pixels_per_cm)]),
            (283, RATIONAL, [_rational(pixels_per_cm)]),
            (296, SHORT, [3]),  # centimetre
            (NDPI_FORMAT_FLAG, LONG, [1]),
            (NDPI_SOURCELENS, FLOAT, [10.0 / spec.mpp / (1 << level)]),
            (NDPI_XOFFSET, SLONG, [0]),
            (NDPI_YOFFSET, SLONG, [0]),
            (NDPI_FOCAL_PLANE, SLONG, [0]),
            (NDPI_MCU_STARTS, LONG, starts),
        ]
        at = fh.tell()
        last = index == len(levels) - 1
        fh.write(_ifd(entries, at, last))
    return first


def _rational(value: float) -> tuple[int, int]:
    return round(value * 1000), 1000


def _ifd(entries, at: int, last: bool) -> bytes:
    """An NDPI IFD at file offset ``at``, then its out-of-line values.

    NDPI extends classic TIFF for > 4 GiB files: the next-IFD offset has 8 bytes and is followed
    by the high 32 bits of every entry's value/offset (all zero here, as the file is < 4 GiB).
    """
    formats = {SHORT: "H", LONG: "I", SLONG: "i", FLOAT: "f"}
    head_size = 2 + 12 * len(entries) + 8 + 4 * len(entries)
    head, extra = [struct.pack("<H", len(entries))], bytearray()
    for tag, kind, values in entries:
        if kind == RATIONAL:
            payload = b"".join(struct.pack("<II", *pair) for pair in values)
        else:
            payload = struct.pack(f"<{len(values)}{formats[kind]}", *values)
        if len(payload) <= 4:
            head.append(struct.pack("<HHI", tag, kind, len(values)) + payload.ljust(4, b"\x00"))
        else:
            head.append(struct.pack("<HHII", tag, kind, len(values), at + head_size + len(extra)))
            extra += payload
            if len(extra) % 2:
                extra += b"\x00"
    next_ifd = 0 if last else at + head_size + len(extra)
    head.append(struct.pack("<Q", next_ifd) + bytes(4 * len(entries)))
    return b"".join(head) + bytes(extra)
