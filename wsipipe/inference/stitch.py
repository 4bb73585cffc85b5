"""Whole-slide stitching of overlapping tile predictions into zarr, one band of chunk rows at a time.

Tiles arrive in row order (non-decreasing ``y``). Each tile's per-class probabilities are
multiplied by a smooth weight window and added to an accumulator that covers only the rows a
future tile can still touch (at most one tile height plus one chunk row), and only the chunk
columns that received tiles. When a tile starting at row ``y`` arrives, every chunk row that
ends at or before ``y`` is final: it is normalised by the accumulated weights, written as uint8
probabilities and a label map (argmax), and recorded in a journal. A killed run resumes from the
journal: tiles that lie entirely in finished rows are skipped, the others are predicted again, so
the result is the same as an uninterrupted run.

Pixels no tile covered get probability 0 for every class and label 0.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsipipe.errors import StoreError
from wsipipe.files import write_atomic
from wsipipe.inference.sliding import blend_window, window_margin

JOURNAL_NAME = "stitch_journal.json"


@dataclass(frozen=True)
class StitchLayout:
    """What a stitch run was started with; a resume must match it exactly."""

    height: int
    width: int
    n_classes: int
    tile_size: int
    overlap: int
    margin: int
    chunk: int
    fingerprint: str = ""
    #: The columns [col0, col1) this stitcher owns (the whole width unless it is one strip of it).
    col0: int = 0
    col1: int = 0
    #: Whether labels outside ``inside`` are cleared as written: rows written one way cannot be
    #: resumed the other (and a journal older than this field is not resumed at all).
    restricted: bool = False

    def to_json(self) -> dict:
        return dict(self.__dict__)


class Stitcher:
    """Blends overlapping tile predictions into ``probabilities`` (C, H, W) and ``labels`` (H, W).

    ``probabilities`` and ``labels`` are uint8 zarr arrays (or anything with numpy-style slice
    assignment) chunked ``chunk`` x ``chunk`` in y/x; ``journal_dir`` holds the resume journal.
    """

    def __init__(
        self,
        probabilities,
        labels,
        journal_dir: str | os.PathLike,
        *,
        tile_size: int,
        overlap: int,
        chunk: int,
        margin: int | None = None,
        fingerprint: str = "",
        columns: tuple[int, int] | None = None,
        inside: Callable[[int, int, int, int], np.ndarray] | None = None,
    ):
        """``margin`` (default ``window_margin``): tile-edge pixels that barely count (see
        ``wsipipe.inference.sliding.cosine_window``); set it to at least the model's receptive-field
        radius. ``columns``: only columns [x0, x1) are accumulated and written (chunk-aligned; see
        ``StripStitcher``). ``inside(y0, y1, x0, x1)``: which pixels of a block keep their label
        (the others get 0), applied as the labels are written so the label map needs no second pass."""
        n_classes, height, width = probabilities.shape
        col0, col1 = columns if columns is not None else (0, width)
        if col0 % chunk or not (col1 % chunk == 0 or col1 == width) or not 0 <= col0 < col1 <= width:
            raise ValueError(f"columns {columns} must be chunk-aligned within the width {width}")
        if labels.shape != (height, width):
            raise ValueError(f"labels shape {labels.shape} does not match probabilities {probabilities.shape}")
        if not 0 <= overlap < tile_size:
            raise ValueError(f"overlap {overlap} must be in [0, tile size {tile_size})")
        margin = window_margin(overlap) if margin is None else margin
        self.layout = StitchLayout(
            height, width, n_classes, tile_size, overlap, margin, chunk, fingerprint, col0, col1, inside is not None
        )
        self._probabilities = probabilities
        self._labels = labels
        self._inside = inside
        name = JOURNAL_NAME if (col0, col1) == (0, width) else JOURNAL_NAME.replace(".json", f"-{col0}-{col1}.json")
        self._journal_path = Path(journal_dir) / name
        self._window = blend_window(tile_size, overlap, margin)
        # Accumulator rows [self._top, self._top + self._rows); one block per chunk column.
        self._rows = tile_size + chunk
        self._blocks: dict[int, np.ndarray] = {}
        self._last_y = -math.inf
        self.max_accumulator_bytes = 0
        self._top = self._read_journal()

    # --- journal -----------------------------------------------------------------------------
    def _read_journal(self) -> int:
        if not self._journal_path.exists():
            self._write_journal(0, complete=False)
            return 0
        try:
            journal = json.loads(self._journal_path.read_text())
            done_rows = int(journal["done_rows"])
            layout = journal["layout"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{self._journal_path}: unreadable stitch journal ({exc})") from exc
        if layout != self.layout.to_json():
            raise StoreError(
                f"{self._journal_path.parent}: an unfinished prediction made with other parameters "
                f"({layout}); remove it or write elsewhere"
            )
        return done_rows

    def _write_journal(self, done_rows: int, complete: bool) -> None:
        write_atomic(
            self._journal_path,
            json.dumps({"done_rows": done_rows, "complete": complete, "layout": self.layout.to_json()}),
        )

    @property
    def done_rows(self) -> int:
        """Rows [0, done_rows) are final and written."""
        return self._top

    @property
    def complete(self) -> bool:
        return self._top >= self.layout.height

    def is_done(self, y: int, tile_height: int | None = None) -> bool:
        """True when a tile at row ``y`` only touches finished rows (a resumed run skips it)."""
        return y + (tile_height or self.layout.tile_size) <= self._top

    # --- accumulation --------------------------------------------------------------------------
    def add(self, probabilities: np.ndarray, x: int, y: int) -> None:
        """Add one tile's (C, h, w) probabilities whose top-left pixel is (x, y).

        Tiles must come in non-decreasing ``y``; ``h`` and ``w`` are at most the tile size (a
        smaller tile is weighted by the top-left part of the window).
        """
        layout = self.layout
        n_classes, tile_h, tile_w = probabilities.shape
        if n_classes != layout.n_classes or tile_h > layout.tile_size or tile_w > layout.tile_size:
            raise ValueError(f"tile of shape {probabilities.shape} does not fit layout {layout}")
        if y < self._last_y:
            raise ValueError(f"tiles must arrive in row order: y={y} after y={self._last_y}")
        self._last_y = y
        self._finalise_before(y)
        # Rows of the tile still open, columns inside the slide (and this stitcher's strip).
        row0 = max(y, self._top) - y
        row1 = min(tile_h, layout.height - y)
        col0, col1 = max(0, layout.col0 - x), min(tile_w, layout.col1 - x)
        if row0 >= row1 or col0 >= col1:
            return
        weight = self._window[row0:row1, col0:col1]
        weighted = probabilities[:, row0:row1, col0:col1].astype(np.float32, copy=False) * weight
        acc_row0 = y + row0 - self._top
        acc_row1 = acc_row0 + (row1 - row0)
        chunk = layout.chunk
        gx0, gx1 = x + col0, x + col1
        for block_index in range(gx0 // chunk, (gx1 - 1) // chunk + 1):
            bx0 = block_index * chunk
            s0, s1 = max(gx0, bx0), min(gx1, bx0 + chunk)
            block = self._block(block_index)
            block[:n_classes, acc_row0:acc_row1, s0 - bx0 : s1 - bx0] += weighted[:, :, s0 - gx0 : s1 - gx0]
            block[n_classes, acc_row0:acc_row1, s0 - bx0 : s1 - bx0] += weight[:, s0 - gx0 : s1 - gx0]

    def _block(self, index: int) -> np.ndarray:
        block = self._blocks.get(index)
        if block is None:
            # Planes 0..C-1: weighted probabilities; plane C: summed weights.
            block = np.zeros((self.layout.n_classes + 1, self._rows, self.layout.chunk), np.float32)
            self._blocks[index] = block
            self.max_accumulator_bytes = max(self.max_accumulator_bytes, sum(b.nbytes for b in self._blocks.values()))
        return block

    def finish(self) -> None:
        """Write every remaining row; after this the arrays are complete (in this stitcher's columns)."""
        self._finalise_before(self.layout.height)
        self._blocks.clear()
        self._write_journal(self._top, complete=True)

    # --- writing final rows ----------------------------------------------------------------------
    def _finalise_before(self, y: int) -> None:
        """Write all chunk rows that end at or before row ``y`` (or the last, partial one at the end)."""
        layout = self.layout
        chunk = layout.chunk
        limit = layout.height if y >= layout.height else (y // chunk) * chunk
        while self._top < limit:
            rows = min(chunk, layout.height - self._top)
            self._write_rows(rows)
            self._shift(rows)
            self._top += rows
            self._write_journal(self._top, complete=False)

    def _write_rows(self, rows: int) -> None:
        layout = self.layout
        n_classes = layout.n_classes
        for index in sorted(self._blocks):
            block = self._blocks[index]
            x0 = index * layout.chunk
            x1 = min(x0 + layout.chunk, layout.width)
            weights = block[n_classes, :rows, : x1 - x0]
            covered = weights > 0
            if not covered.any():
                continue
            probs = block[:n_classes, :rows, : x1 - x0] / np.where(covered, weights, 1.0)
            uncovered = ~covered
            labels = first_argmax(probs)
            labels[uncovered] = 0
            if self._inside is not None:
                labels[~self._inside(self._top, self._top + rows, x0, x1)] = 0
            np.clip(probs, 0.0, 1.0, out=probs)
            probs *= 255.0
            probs_u8 = np.rint(probs, out=probs).astype(np.uint8)
            probs_u8[:, uncovered] = 0
            self._probabilities[:, self._top : self._top + rows, x0:x1] = probs_u8
            self._labels[self._top : self._top + rows, x0:x1] = labels

    def _shift(self, rows: int) -> None:
        for index in list(self._blocks):
            block = self._blocks[index]
            block[:, :-rows] = block[:, rows:]
            block[:, -rows:] = 0
            if not block.any():
                del self._blocks[index]


def first_argmax(values: np.ndarray) -> np.ndarray:
    """uint8 index of the largest of ``values`` (C, h, w) along C, the first on ties (as
    ``argmax``), one class at a time: several times faster than ``argmax(axis=0)`` for a few classes.
    Unlike ``argmax``, a NaN is never the largest (blended probabilities hold none)."""
    best = values[0]
    index = np.zeros(best.shape, np.uint8)
    for k in range(1, len(values)):
        larger = values[k] > best
        index[larger] = k
        if k + 1 < len(values):
            best = np.maximum(best, values[k])
    return index


def remove_journals(journal_dir: str | os.PathLike) -> None:
    """Delete the resume journals of a finished prediction: a finished store holds only the store."""
    for path in Path(journal_dir).glob(JOURNAL_NAME.replace(".json", "*.json")):
        path.unlink()


class StripStitcher:
    """Stitches a prediction one column strip at a time, so that memory depends on the strip's
    width, not the slide's.

    Tiles are fed strip by strip (``plan`` gives the order, ``add`` takes them in it), each strip
    in row order; a tile that
    crosses a strip border is fed to both strips (its prediction counts once per strip, clipped
    to the strip), so every pixel gets exactly the contributions a single full-width stitcher
    would give it, added in the same order. Each strip keeps its own resume journal.
    """

    def __init__(self, probabilities, labels, journal_dir, *, strip_width: int, chunk: int, **options):
        width = probabilities.shape[2]
        strip_width = max(chunk, strip_width // chunk * chunk)
        self.strips = [
            Stitcher(
                probabilities,
                labels,
                journal_dir,
                chunk=chunk,
                columns=None if strip_width >= width else (x0, min(x0 + strip_width, width)),
                **options,
            )
            for x0 in range(0, width, strip_width)
        ]
        self._current = 0
        self._order: list[tuple[int, int, int, int]] = []
        self._next = 0
        self.max_accumulator_bytes = 0

    def plan(self, positions: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
        """(index into ``positions``, x, y, strip) of every tile still to stitch, strip after
        strip: the order ``add`` takes them in. A tile crossing a strip border is listed once per
        strip, finished rows are left out."""
        tile = self.strips[0].layout.tile_size
        order = []
        for k, strip in enumerate(self.strips):
            x0, x1 = strip.layout.col0, strip.layout.col1
            order += [
                (i, x, y, k) for i, (x, y) in enumerate(positions) if x < x1 and x + tile > x0 and not strip.is_done(y)
            ]
        self._order, self._next = order, 0
        return order

    def add(self, probabilities: np.ndarray, x: int, y: int) -> None:
        """The next tile of the ``plan`` order, whose top-left pixel is (x, y); strips before its
        strip are finished (and freed) first."""
        if self._next >= len(self._order) or self._order[self._next][1:3] != (x, y):
            raise ValueError(f"tile at ({x}, {y}) does not come next in the stitcher's plan")
        strip = self._order[self._next][3]
        self._next += 1
        while self._current < strip:
            self.strips[self._current].finish()
            self._current += 1
        self.strips[strip].add(probabilities, x, y)
        self.max_accumulator_bytes = max(self.max_accumulator_bytes, self.strips[strip].max_accumulator_bytes)

    @property
    def complete(self) -> bool:
        return all(strip.complete for strip in self.strips)

    def finish(self) -> None:
        """Finish every strip not finished yet; after this the arrays are complete."""
        for strip in self.strips[self._current :]:
            strip.finish()
        self._current = len(self.strips)
