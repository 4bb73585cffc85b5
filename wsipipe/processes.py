"""Helper processes that never outlive wsipipe and stay quiet on Ctrl-C.

A terminal's Ctrl-C reaches every process of the foreground group: helpers that took it would each
print a traceback while the main process is already stopping them. A ``kill -9`` of the main
process gives it no chance to stop them at all, so each helper watches its parent itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: prctl(2) option: the signal the kernel sends this process when its parent dies.
_PR_SET_PDEATHSIG = 1
#: How often the fallback watchdog looks at the parent (seconds).
WATCH_INTERVAL = 0.5


@contextmanager
def helpers_ignore_ctrl_c() -> Iterator[None]:
    """Start helper processes inside this: they inherit SIGINT ignored, from their first
    instruction on; the main process keeps its own handler for after the block."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may change handlers; ``die_with_parent`` covers the rest
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def die_with_parent(parent_pid: int) -> None:
    """Called first in a helper process: ignore Ctrl-C (the parent stops its helpers), and exit as
    soon as the parent ``parent_pid`` is gone, however it died.

    Linux: the kernel's parent-death signal (SIGKILL). Elsewhere, and should the parent have died
    before this ran: a daemon thread that polls the parent's pid.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="wsipipe-parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCH_INTERVAL)
    os._exit(1)


def may_start_helpers() -> bool:
    """Whether this process may start helper processes: not inside a daemonic one (a Dask or
    multiprocessing worker, where the batch is parallel by slide), which Python forbids children."""
    import multiprocessing

    return not multiprocessing.current_process().daemon
