"""Writing a whole file so that readers see the old content or the new one, never a mix."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

_TEMPORARY_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # the names write_atomic gives them


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through a unique temporary name in the same
    folder, flushed to disk, then renamed over ``path``. OSError propagates; the temporary file
    never stays behind unless the process is killed outright (see ``remove_temporaries``)."""
    path = Path(path)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(temporary, "xb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def remove_temporaries(folder: str | os.PathLike) -> None:
    """Delete the temporaries that ``write_atomic`` left in ``folder`` when a SIGKILL cut it short.

    Only safe while no other process writes there (the batch calls it holding its lock).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and _TEMPORARY_NAME.fullmatch(path.name):
            path.unlink(missing_ok=True)
