"""Reading any supported annotation file (format detected from its content) and writing one."""

from __future__ import annotations

import os
from pathlib import Path

from wsipipe.annotations.aperio import read_aperio
from wsipipe.annotations.asap import read_asap, write_asap
from wsipipe.annotations.geojson import read_geojson, write_geojson
from wsipipe.annotations.model import AnnotationSet
from wsipipe.annotations.xmlsafe import SNIFF_LIMIT, xml_root_name
from wsipipe.errors import AnnotationError, InvalidInputError, OutputError
from wsipipe.files import atomic_path, check_output_folder

ASAP_ROOT = "ASAP_Annotations"
APERIO_ROOT = "Annotations"
WRITERS = {"geojson": write_geojson, "asap": write_asap}
EXTENSIONS = {".geojson": "geojson", ".json": "geojson", ".xml": "asap"}


def detect_format(path: Path) -> str:
    """'asap', 'aperio' or 'geojson', from the file's first bytes (never its name)."""
    path = Path(path)
    if not path.exists():
        raise AnnotationError(f"{path}: no such file")
    if not path.is_file():
        raise AnnotationError(f"{path}: not a file")
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_LIMIT)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text:
        raise AnnotationError(f"{path}: the file is empty")
    if text[0] in "{[":
        return "geojson"
    if text[0] != "<":
        raise AnnotationError(f"{path}: not an annotation file: neither XML (ASAP, Aperio) nor GeoJSON")
    root, line = xml_root_name(path, head.decode("utf-8", errors="replace"))
    if root == ASAP_ROOT:
        return "asap"
    if root == APERIO_ROOT:
        return "aperio"
    raise AnnotationError(
        f"{path}:{line}: root element <{root}> is neither ASAP <{ASAP_ROOT}> nor Aperio ImageScope <{APERIO_ROOT}>"
    )


def read_annotations(path: str | os.PathLike, strict: bool = False) -> AnnotationSet:
    """All annotations of an ASAP XML, Aperio ImageScope XML or GeoJSON file.

    Bad objects are skipped with a warning (logger ``wsipipe.annotations``), or raise
    ``AnnotationError`` when ``strict``; an unreadable file always raises.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "asap":
        return read_asap(path, strict)
    if fmt == "aperio":
        return read_aperio(path, strict)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: GeoJSON is not valid UTF-8 (byte {exc.start})") from None
    return read_geojson(path, text, strict)


def output_format(path: str | os.PathLike, to: str | None = None) -> str:
    """The writer for ``path``: ``to`` when given, else from the extension."""
    if to is not None:
        if to not in WRITERS:
            raise InvalidInputError(f"{{to}} {to!r}: choose one of {', '.join(WRITERS)}", parameter="to")
        return to
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        raise InvalidInputError(
            f"{path}: cannot tell the output format from the extension {suffix or '(none)'!r}; "
            "use .geojson/.json or .xml, or pass {to} geojson|asap",
            parameter="to",
        )
    return EXTENSIONS[suffix]


def write_annotations(annotations: AnnotationSet, path: str | os.PathLike, to: str | None = None) -> Path:
    """Write GeoJSON or ASAP XML through a temporary name in the same folder, then rename."""
    path = Path(path)
    writer = WRITERS[output_format(path, to)]
    check_output_folder(path, parameter=None)
    try:
        with atomic_path(path) as temporary:
            writer(annotations, temporary)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return path
