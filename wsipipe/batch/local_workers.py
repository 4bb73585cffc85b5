"""The local cluster's worker processes leave Ctrl-C to the batch process.

A terminal's Ctrl-C goes to the whole process group; local workers that took it would die printing
tracebacks, each on its own. Ignoring it there, only the batch process sees it (KeyboardInterrupt):
it records its status and closes the cluster, which stops the workers.
"""

from __future__ import annotations

import signal
import threading

from distributed import WorkerPlugin


class IgnoreCtrlC(WorkerPlugin):
    """Makes a worker process ignore SIGINT (for local workers only: a user's own cluster keeps its own)."""

    name = "wsipipe-ignore-ctrl-c"

    def setup(self, worker) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
