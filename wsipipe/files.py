"""Writing a whole file so that readers see the old content or the new one, never a mix."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through a unique temporary name in the same
    folder, flushed to disk, then renamed over ``path``. OSError propagates; the temporary file
    never stays behind."""
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
