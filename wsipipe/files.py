"""Writing a whole file so that readers see the old content or the new one, never a mix, and
one writer at a time per output folder."""

from __future__ import annotations

import fcntl
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from wsipipe.errors import OutputError

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

    Only safe while no other process writes there: ``folder_lock`` calls it once it holds the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and _TEMPORARY_NAME.fullmatch(path.name):
            path.unlink(missing_ok=True)


#: (folder, lock file name) of the folder locks this process holds.
_HELD: set[tuple[Path, str]] = set()


@contextmanager
def folder_lock(folder: str | os.PathLike, name: str = ".wsipipe.lock",
                busy: str = "another wsipipe run is writing to this folder") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (through the file ``name`` in it), or raise
    ``OutputError`` "FOLDER: ``busy``" when another process holds it. Once it holds the lock, it
    deletes the temporaries an earlier, killed run left in ``folder`` (``remove_temporaries``).

    Two runs writing one folder would interleave their temporaries and renames. The kernel drops
    the lock when its process dies, so a killed run never leaves it behind. Nested use in one
    process passes (``segment --nuclei`` runs the nuclei stage into its own folder).
    """
    key = (Path(folder).resolve(), name)
    if key in _HELD:
        yield
        return
    try:
        handle = open(key[0] / name, "a")
    except OSError as exc:
        raise OutputError(f"{folder}: cannot lock the output folder ({exc.strerror or exc})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"{folder}: {busy}") from None
        except OSError as exc:  # a file system without locks
            raise OutputError(f"{folder}: cannot lock the output folder ({exc.strerror or exc})") from None
        _HELD.add(key)
        try:
            remove_temporaries(key[0])
            yield
        finally:
            _HELD.discard(key)
