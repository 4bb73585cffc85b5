"""Writing a whole file so that readers see the old content or the new one, never a mix, and
one writer at a time per output folder."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from wsipipe.errors import FolderBusyError, OutputError

_TEMPORARY_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # the names atomic_path gives them


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temporary path beside ``path`` for the caller to write (a file, or a folder
    such as a zarr store); on success it is renamed over ``path`` (a file is flushed to disk first),
    on any error deleted. A reader of a file ``path`` sees the old content or the new, never a
    part. Only a process killed outright leaves the temporary behind (``remove_temporaries``)."""
    path = Path(path)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield temporary
        if temporary.is_file():
            descriptor = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # a folder cannot be renamed over a folder; here the swap is not atomic
        os.replace(temporary, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            exc.filename = str(path)  # the output, not its temporary: what the "disk full" line names
        raise
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through ``atomic_path``. OSError propagates."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def remove_temporaries(folder: str | os.PathLike) -> None:
    """Delete the temporaries that ``atomic_path`` left in ``folder`` when a SIGKILL cut it short.

    Only safe while no other process writes there: ``folder_lock`` calls it once it holds the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _TEMPORARY_NAME.fullmatch(path.name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def make_output_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and its parents) for a stage's outputs, or raise one ``OutputError``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: the output folder is not writable")
    return folder


#: (folder, lock file name) of the folder locks this process holds.
_HELD: set[tuple[Path, str]] = set()


@contextmanager
def folder_lock(folder: str | os.PathLike, name: str = ".wsipipe.lock",
                busy: str = "another wsipipe run is writing to this folder") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (through the file ``name`` in it), or raise
    ``FolderBusyError`` "FOLDER: ``busy``" when another process holds it. Once it holds the lock, it
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
            raise FolderBusyError(f"{folder}: {busy}") from None
        except OSError as exc:  # a file system without locks
            raise OutputError(f"{folder}: cannot lock the output folder ({exc.strerror or exc})") from None
        _HELD.add(key)
        try:
            remove_temporaries(key[0])
            yield
        finally:
            _HELD.discard(key)
