"""Slide reading: one interface (``SlideReader``), one backend per library, one factory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from wsipipe.dicom.series import is_dicom_path
from wsipipe.errors import InvalidInputError, SlideOpenError
from wsipipe.files import check_regular_file
from wsipipe.slide.base import Level, SlideReader

BACKENDS = ("openslide", "tiffslide", "wsidicom")
#: Tried in this order when no backend is named: DICOM series, and everything else.
DICOM_BACKENDS = ("openslide", "wsidicom")
FILE_BACKENDS = ("openslide", "tiffslide")

__all__ = ["BACKENDS", "Level", "SlideReader", "open_slide"]

# tifffile logs every damaged page offset it meets (as an error); a slide that cannot be read
# fails with one error of ours instead, and one that can be read needs no such noise.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def _backend_class(name: str) -> type[SlideReader]:
    # Imported lazily: each backend pulls in its native library.
    if name == "openslide":
        from wsipipe.slide.openslide_backend import OpenSlideReader

        return OpenSlideReader
    if name == "wsidicom":
        from wsipipe.slide.wsidicom_backend import WsiDicomReader

        return WsiDicomReader
    from wsipipe.slide.tiffslide_backend import TiffSlideReader

    return TiffSlideReader


def open_slide(
    path: str | os.PathLike,
    backend: str | None = None,
    mpp_override: float | None = None,
    levels_cache: str | os.PathLike | None = None,
) -> SlideReader:
    """Open ``path`` with ``backend``, or with openslide and then tiffslide when none is named;
    with ``levels_cache``, the levels built for it there (``wsipipe.slide.built``) come too.

    A DICOM WSI (a folder holding one series, or any ``.dcm`` file of it) is checked as a series
    first, then read by openslide, or wsidicom where openslide refuses its transfer syntax.
    """
    path = Path(path)
    if backend is not None and backend not in BACKENDS:
        raise InvalidInputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not path.is_dir():  # a DICOM series may be a folder
        check_regular_file(path, SlideOpenError)  # a FIFO would block the slide library for ever
    elif not os.access(path, os.R_OK | os.X_OK):
        raise SlideOpenError(f"{path}: not readable (permission denied)")
    if is_dicom_path(path):
        reader = _open_dicom(path, backend, mpp_override)
    elif backend == "wsidicom":
        raise InvalidInputError(f"{path}: {{backend}} wsidicom reads DICOM series only", parameter="backend")
    else:
        reader = _open_with(path, path, [backend] if backend else FILE_BACKENDS, mpp_override, SlideOpenError)
    if levels_cache is None:
        return reader
    from wsipipe.slide.built import attach_built_levels

    return attach_built_levels(reader, levels_cache)


def _open_dicom(path: Path, backend: str | None, mpp_override: float | None) -> SlideReader:
    from wsipipe.dicom.series import DicomInputError, resolve_series

    if backend is not None and backend not in DICOM_BACKENDS:
        raise InvalidInputError(
            f"{path}: a DICOM series; choose {{backend}} {' or '.join(DICOM_BACKENDS)}", parameter="backend"
        )
    series = resolve_series(path)
    # openslide takes one file of the series (it finds the others beside it); wsidicom the series.
    targets = {"openslide": series.base.path, "wsidicom": path}
    names = [backend] if backend else DICOM_BACKENDS
    reader = _open_with(path, targets, names, mpp_override, DicomInputError)
    reader.path = path  # the slide as the user named it, not the one file openslide opened
    return reader


def _open_with(path: Path, targets, names, mpp_override, error: type[SlideOpenError]) -> SlideReader:
    """The first backend of ``names`` that opens its target (``targets``: a path, or one per backend)
    and decodes a pixel; ``error`` naming every refusal otherwise."""
    errors = []
    for name in names:
        target = targets[name] if isinstance(targets, dict) else targets
        try:
            reader = _backend_class(name)(target, mpp_override)
            _check_readable(reader)
            break
        except SlideOpenError as exc:
            errors.append(str(exc).removeprefix(f"{target}: "))
    else:
        raise error(f"{path}: not a readable slide ({'; '.join(errors)})")
    return reader


def _check_readable(reader: SlideReader) -> None:
    """Decode one pixel of the smallest level so corrupt files fail at open, not mid-run."""
    last = len(reader.levels) - 1
    lvl = reader.levels[last]
    reader.read_region(
        (round((lvl.width // 2) * lvl.downsample), round((lvl.height // 2) * lvl.downsample)), last, (1, 1)
    )
