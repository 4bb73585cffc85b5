"""Which slides a batch covers: a folder searched recursively, or a CSV manifest.

Nothing here opens a slide: a corrupt or missing file, a FIFO, a link to nothing or a link loop
is the per-slide failure to report, never a reason to stop the batch. Only a batch that can never
work (no INPUT, a malformed manifest, no matching file) is refused up front. Paths are resolved
without failing on link loops (``_real``), and folders are walked without following directory
links, so a link to an ancestor cannot make the walk cycle.
"""

from __future__ import annotations

import csv
import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path

from wsipipe.batch.naming import output_name
from wsipipe.dicom.series import DICOM_SUFFIX
from wsipipe.errors import InvalidInputError
from wsipipe.files import check_regular_file

DEFAULT_PATTERN = "*.ndpi,*.svs,*.tif,*.tiff,*.dcm"
MANIFEST_SLIDE_COLUMN = "slide"
MANIFEST_ANNOTATION_COLUMN = "annotation"


@dataclass(frozen=True)
class SlideEntry:
    """One slide of the batch.

    ``key`` identifies the slide across runs (its path relative to INPUT, or to the manifest's
    folder); ``name`` is its output folder under OUTDIR; ``options`` are the manifest's per-slide
    option cells, still as text (the job converts them).
    """

    key: str
    path: Path
    name: str
    annotation: Path | None = None
    options: dict[str, str] = field(default_factory=dict)


def parse_patterns(pattern: str) -> list[str]:
    """``"*.svs, *.NDPI"`` -> ``["*.svs", "*.ndpi"]`` (matching ignores case)."""
    patterns = [p.strip().lower() for p in pattern.split(",") if p.strip()]
    if not patterns:
        raise InvalidInputError(
            "{pattern} is empty; give file-name patterns such as '*.svs,*.ndpi'", parameter="pattern"
        )
    for p in patterns:
        if "/" in p or os.sep in p:
            raise InvalidInputError(f"{{pattern}} {p!r}: patterns match file names, not paths", parameter="pattern")
    return patterns


def discover(input_path: Path, pattern: str = DEFAULT_PATTERN, exclude: Path | None = None) -> list[SlideEntry]:
    """The batch's slides, sorted by key. ``exclude`` (OUTDIR) is never searched."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise InvalidInputError(f"{input_path}: no such folder or manifest")
    if input_path.is_dir():
        entries = _from_folder(_real(input_path), parse_patterns(pattern), exclude)
        if not entries:
            raise InvalidInputError(f"{input_path}: no file matches {{pattern}} {pattern!r}", parameter="pattern")
        return entries
    if input_path.suffix.lower() == ".csv":
        return _from_manifest(input_path)
    raise InvalidInputError(f"{input_path}: INPUT must be a folder of slides or a .csv manifest")


def _from_folder(root: Path, patterns: list[str], exclude: Path | None) -> list[SlideEntry]:
    excluded = _real(exclude) if exclude is not None else None
    entries = []
    dicom_files = []
    # os.walk without following directory links: a link loop or a link to / cannot run away.
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if excluded is None or _real(here / d) != excluded)
        for file_name in sorted(files):
            if any(fnmatch.fnmatchcase(file_name.lower(), p) for p in patterns):
                path = here / file_name
                if file_name.lower().endswith(DICOM_SUFFIX):
                    dicom_files.append(path)
                    continue
                key = path.relative_to(root).as_posix()
                entries.append(SlideEntry(key=key, path=_real(path), name=output_name(key)))
    entries += _dicom_entries(root, dicom_files)
    return sorted(entries, key=lambda e: e.key)


def _dicom_entries(root: Path, files: list[Path]) -> list[SlideEntry]:
    """One entry per DICOM WSI series (however many files and folders), read from its base
    level's file; other DICOM (a Segmentation written there) is left out; an unreadable file is
    an entry of its own, for its job to report."""
    from wsipipe.dicom.series import group_series

    series, unreadable = group_series(files)
    entries = []
    for one in series:
        first = (one.levels or one.instances)[0].path  # a series without levels fails in its job
        key = first.relative_to(root).as_posix()
        entries.append(SlideEntry(key=key, path=first.resolve(), name=output_name(key, one.description or one.uid)))
    for path in unreadable:
        key = path.relative_to(root).as_posix()
        entries.append(SlideEntry(key=key, path=path.resolve(), name=output_name(key)))
    return entries


def _from_manifest(manifest: Path) -> list[SlideEntry]:
    """CSV with a header: ``slide`` (required), ``annotation`` (optional), other columns = options.

    Relative paths are relative to the manifest's folder. Empty option cells mean "the batch's
    setting".
    """
    base = _real(manifest).parent
    check_regular_file(manifest)  # a FIFO would block the open below for ever
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{manifest}: cannot read the manifest ({exc})") from exc
    if not rows:
        raise InvalidInputError(f"{manifest}: the manifest is empty")
    header = [h.strip().lower().replace("-", "_") for h in rows[0]]
    if MANIFEST_SLIDE_COLUMN not in header:
        raise InvalidInputError(
            f"{manifest}: the header needs a {MANIFEST_SLIDE_COLUMN!r} column (found {', '.join(header)})"
        )
    if len(set(header)) != len(header) or "" in header:
        raise InvalidInputError(f"{manifest}: column names must be unique and non-empty")
    entries: list[SlideEntry] = []
    seen: dict[Path, int] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise InvalidInputError(f"{manifest}, line {line_no}: more cells than header columns")
        cells = dict(zip(header, (c.strip() for c in row)))
        slide_text = cells.pop(MANIFEST_SLIDE_COLUMN, "")
        if not slide_text:
            raise InvalidInputError(f"{manifest}, line {line_no}: empty {MANIFEST_SLIDE_COLUMN!r} cell")
        annotation_text = cells.pop(MANIFEST_ANNOTATION_COLUMN, "")
        slide = base / slide_text
        resolved = _real(slide)
        if resolved in seen:
            raise InvalidInputError(
                f"{manifest}, line {line_no}: {slide_text} is already listed on line {seen[resolved]}"
            )
        seen[resolved] = line_no
        normal = Path(os.path.normpath(slide))
        key = normal.relative_to(base).as_posix() if normal.is_relative_to(base) else normal.as_posix()
        entries.append(
            SlideEntry(
                key=key,
                path=resolved,
                name=output_name(key),
                annotation=_real(base / annotation_text) if annotation_text else None,
                options={k: v for k, v in cells.items() if v},
            )
        )
    if not entries:
        raise InvalidInputError(f"{manifest}: the manifest lists no slides")
    return entries


def _real(path: Path) -> Path:
    """``path`` with links resolved; a link loop is kept as it is (``Path.resolve`` raises on one),
    so that slide fails alone when it is opened."""
    return Path(os.path.realpath(path))
