"""The local cluster's worker processes leave Ctrl-C to the batch process.

A terminal's Ctrl-C goes to the whole process group; local workers that took it would die printing
tracebacks, each on its own. Ignoring it there, only the batch process sees it (KeyboardInterrupt):
it records its status and closes the cluster, which stops the workers.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from distributed import WorkerPlugin


@contextmanager
def ctrl_c_for_this_process_only():
    """Ignore SIGINT while the local cluster starts: the worker processes it spawns inherit that
    (``IgnoreCtrlC`` keeps it so in workers restarted later). A Ctrl-C in these seconds is lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class IgnoreCtrlC(WorkerPlugin):
    """Makes a worker process ignore SIGINT (for local workers only: a user's own cluster keeps its own)."""

    name = "wsipipe-ignore-ctrl-c"

    def setup(self, worker) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
