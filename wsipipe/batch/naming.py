"""One output folder name per slide: readable, unique, and unable to leave OUTDIR.

Archive file names are untrusted: two slides may share a name in different folders, and names
may hold spaces, unicode, ``..`` or separators. The folder name is a sanitised ASCII stem (for
people) plus a short hash of the slide's key (its path relative to INPUT), which makes it unique.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import PurePosixPath

MAX_STEM_CHARS = 60
HASH_CHARS = 10
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_stem(file_name: str) -> str:
    """The file name without its extension, reduced to ``[A-Za-z0-9._-]``; never empty or dotted."""
    stem = PurePosixPath(file_name.replace("\\", "/")).name
    return safe_text(stem.rsplit(".", 1)[0])


def safe_text(text: str) -> str:
    """``text`` reduced to ``[A-Za-z0-9._-]``; never empty or dotted."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE.sub("_", ascii_text).strip("._-")[:MAX_STEM_CHARS].strip("._-")
    return cleaned or "slide"


def output_name(key: str, label: str | None = None) -> str:
    """Folder name for the slide identified by ``key`` (e.g. ``a/b/slide 1.svs`` -> ``slide_1-3f9a...``);
    ``label`` (a DICOM series' description or UID) replaces the file name as the readable part."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    return f"{safe_text(label) if label else safe_stem(key)}-{digest}"
