"""Slide reading: one interface (``SlideReader``), one backend per library, one factory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from wsipipe.errors import InvalidInputError, SlideOpenError
from wsipipe.files import check_regular_file
from wsipipe.slide.base import Level, SlideReader

BACKENDS = ("openslide", "tiffslide")

__all__ = ["BACKENDS", "Level", "SlideReader", "open_slide"]

# tifffile logs every damaged page offset it meets (as an error); a slide that cannot be read
# fails with one error of ours instead, and one that can be read needs no such noise.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def _backend_class(name: str) -> type[SlideReader]:
    # Imported lazily: each backend pulls in its native library.
    if name == "openslide":
        from wsipipe.slide.openslide_backend import OpenSlideReader

        return OpenSlideReader
    from wsipipe.slide.tiffslide_backend import TiffSlideReader

    return TiffSlideReader


def open_slide(path: str | os.PathLike, backend: str | None = None, mpp_override: float | None = None) -> SlideReader:
    """Open ``path`` with ``backend``, or with openslide and then tiffslide when none is named."""
    path = Path(path)
    if backend is not None and backend not in BACKENDS:
        raise InvalidInputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    check_regular_file(path, SlideOpenError)  # a FIFO would block the slide library for ever
    candidates = [backend] if backend else list(BACKENDS)
    errors = []
    for name in candidates:
        try:
            reader = _backend_class(name)(path, mpp_override)
            _check_readable(reader)
            return reader
        except SlideOpenError as exc:
            errors.append(str(exc).removeprefix(f"{path}: "))
    raise SlideOpenError(f"{path}: not a readable slide ({'; '.join(errors)})")


def _check_readable(reader: SlideReader) -> None:
    """Decode one pixel of the smallest level so corrupt files fail at open, not mid-run."""
    last = len(reader.levels) - 1
    lvl = reader.levels[last]
    reader.read_region(
        (round((lvl.width // 2) * lvl.downsample), round((lvl.height // 2) * lvl.downsample)), last, (1, 1)
    )
