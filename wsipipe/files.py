"""Writing a whole file so that readers see the old content or the new one, never a mix, and
one writer at a time per output folder; checking what a path is before reading it."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wsipipe.errors import FolderBusyError, InvalidInputError, OutputError, WsipipeError

# atomic_path's temporaries are ".NAME.wsipipe-<8 hex>.tmp": the marker tells them from a user's
# own ".X.<8 hex>.tmp" files, which remove_temporaries never touches.
_TEMPORARY_MARKER = "wsipipe-"
_TEMPORARY_NAME = re.compile(r"\.(?P<output>.+)\." + _TEMPORARY_MARKER + r"[0-9a-f]{8}\.tmp")
# What a path is when it is not a regular file (stat's file types).
_FILE_KINDS = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temporary path beside ``path`` for the caller to write (a file, or a folder
    such as a zarr store); on success it is renamed over ``path`` (a file is flushed to disk first),
    on any error deleted. A reader of a file ``path`` sees the old content or the new, never a
    part. Only a process killed outright leaves the temporary behind (``remove_temporaries``)."""
    path = Path(path)
    temporary = path.parent / f".{path.name}.{_TEMPORARY_MARKER}{uuid.uuid4().hex[:8]}.tmp"
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


class _Published(Exception):
    """Raised inside ``staged_outputs``'s ``atomic_path`` once the outputs are in place, so that it
    deletes the (then empty) staging folder instead of renaming it."""


@contextmanager
def staged_outputs(outdir: str | os.PathLike, last: str | None = None) -> Iterator[Path]:
    """Yield a staging folder inside ``outdir`` for the outputs of one run, so that they appear
    together or not at all.

    On success every entry of the staging folder is moved into ``outdir``, replacing an old one of
    the same name (folders too), and ``last`` (the file that says the run finished) is moved last.
    On any error the staging folder is deleted and ``outdir``'s previous outputs are left as they
    were. Hidden entries (locks, temporaries) are not moved. The folder is an ``atomic_path`` temporary, so a run killed outright leaves only what
    ``remove_temporaries`` deletes (call it under ``folder_lock``).
    """
    outdir = Path(outdir)
    try:
        with atomic_path(outdir / "outputs") as staging:
            staging.mkdir()
            yield staging
            # hidden entries (a nested run's lock, temporaries) stay behind and go with the folder
            entries = sorted((e for e in staging.iterdir() if not e.name.startswith(".")), key=lambda e: e.name == last)
            for entry in entries:
                target = outdir / entry.name
                if os.path.lexists(target) and (entry.is_dir() or (target.is_dir() and not target.is_symlink())):
                    # a folder cannot be renamed over a folder (nor over a file): the old entry goes
                    # into the staging folder, which is deleted with it
                    os.replace(target, staging / f".replaced.{entry.name}")
                os.replace(entry, target)
            raise _Published
    except _Published:
        pass


def remove_temporaries(folder: str | os.PathLike, output: str | None = None) -> None:
    """Delete the temporaries that ``atomic_path`` left in ``folder`` when a SIGKILL cut it short
    (only those of the output named ``output``, when given); files of other names are kept.

    Only safe while no other process writes them: ``folder_lock`` and ``output_lock`` call it once
    they hold the folder or the output.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = _TEMPORARY_NAME.fullmatch(path.name)
        if match and (output is None or match["output"] == output):
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


def check_output_folder(path: str | os.PathLike, parameter: str | None = "output") -> Path:
    """The folder an output file goes into exists (checked before any work starts); ``parameter``:
    the option that named ``path`` (None for a positional argument)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        named = f"{{{parameter}}} " if parameter else ""
        raise OutputError(f"{named}{path}: the folder {folder} does not exist", parameter=parameter)
    return path


#: (folder, lock file name) of the folder locks this process holds.
_HELD: set[tuple[Path, str]] = set()


@contextmanager
def folder_lock(
    folder: str | os.PathLike, name: str = ".wsipipe.lock", busy: str = "another wsipipe run is writing to this folder"
) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (through the file ``name`` in it), or raise
    ``FolderBusyError`` "FOLDER: ``busy``" when another process holds it. Once it holds the lock, it
    deletes the temporaries an earlier, killed run left in ``folder`` (``remove_temporaries``).

    Two runs writing one folder would interleave their temporaries and renames. The kernel drops
    the lock when its process dies, so a killed run never leaves it behind. Nested use in one
    process passes (``segment --nuclei`` runs the nuclei stage into its own folder).
    """
    with _exclusive(Path(folder), name, busy) as held:
        if held:
            remove_temporaries(folder)
        yield


@contextmanager
def output_lock(path: str | os.PathLike, busy: str = "another wsipipe run is writing it") -> Iterator[None]:
    """Hold an exclusive lock on the single output ``path`` (a file or a store), through the file
    ``.NAME.lock`` beside it, or raise ``OutputError`` "PATH: ``busy``". Holding it, delete the
    temporaries a killed writer of this output left (other outputs' are theirs).

    For commands that write one output into a folder others may share (``synth``, ``tile``): runs
    writing other outputs there go on in parallel. The lock file is removed on release (a
    ``kill -9`` leaves it, harmless, until the next run of that output).
    """
    path = Path(path)
    name = f".{path.name}.lock"
    with _exclusive(path.parent, name, busy, subject=path, remove_on_release=True) as held:
        if held:
            remove_temporaries(path.parent, path.name)
        yield


@contextmanager
def _exclusive(
    folder: Path, name: str, busy: str, subject: Path | None = None, remove_on_release: bool = False
) -> Iterator[bool]:
    """flock the file ``folder/name``; yields False when this process already holds it (nested).

    With ``remove_on_release`` the lock file is deleted while still locked; a run that opened it
    just before then finds its lock on a deleted file and takes the new one instead.
    """
    key = (folder.resolve(), name)
    if key in _HELD:
        yield False
        return
    # Cannot create or lock the lock file: for a single output, that is being unable to write it.
    cannot = "cannot lock the output folder" if subject is None else "cannot write it"
    subject = folder if subject is None else subject
    lock_path = key[0] / name
    while True:
        try:  # O_NONBLOCK: a FIFO planted under the lock's name fails here instead of blocking
            descriptor = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK, 0o666)
        except OSError as exc:
            raise OutputError(f"{subject}: {cannot} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise FolderBusyError(f"{subject}: {busy}") from None
        except OSError as exc:  # a file system without locks
            os.close(descriptor)
            raise OutputError(f"{subject}: {cannot} ({exc.strerror or exc})") from None
        try:
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(descriptor).st_ino:
            break
        os.close(descriptor)  # the holder before us deleted this file as it released it: lock the new one
    _HELD.add(key)
    try:
        yield True
    finally:
        _HELD.discard(key)
        if remove_on_release:
            lock_path.unlink(missing_ok=True)
        os.close(descriptor)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks so a large file costs no memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_regular_file(path: str | os.PathLike, error: type[WsipipeError] = InvalidInputError) -> Path:
    """``path`` when it is a readable regular file (links followed); else ``error`` "PATH: why".

    Every input file is checked here before anything opens it: an input may be named like a
    slide yet be a FIFO (opening it waits for a writer for ever), a device, a link loop or a
    link to nothing.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        why = "no such file (a symbolic link to nothing)" if os.path.islink(path) else "no such file"
        raise error(f"{path}: {why}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{path}: a symbolic link loop") from None
        if exc.errno == errno.EACCES:
            raise error(f"{path}: not readable (permission denied)") from None
        raise error(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise error(f"{path}: is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise error(f"{path}: is {_FILE_KINDS.get(stat.S_IFMT(mode), 'a special file')}, not a regular file")
    if not os.access(path, os.R_OK):
        raise error(f"{path}: not readable (permission denied)")
    return path


# Reading a folder someone else may have made (an output folder given to the viewer): a link in it
# may point anywhere on this machine, and a FIFO or a device would hold the reader for ever. Only
# regular files and folders inside it are read.


def file_inside(folder: Path, name: str) -> Path | None:
    """``folder/name`` when it is a regular file whose real path lies inside ``folder``, else None."""
    path = folder / name
    try:
        real = path.resolve(strict=True)
        if real.is_relative_to(folder.resolve(strict=True)) and real.is_file():
            return path
    except (OSError, RuntimeError):  # gone, a link loop, unreadable
        pass
    return None


def plain_tree(root: Path) -> bool:
    """Whether ``root`` is a folder holding only folders and regular files, no links (a zarr store
    the overlays may read)."""
    if root.is_symlink() or not root.is_dir():
        return False
    pending = [root]
    try:
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                    elif not entry.is_file(follow_symlinks=False):
                        return False
    except OSError:
        return False
    return True
