"""A small hospital-like archive built from the shared slides, and a real Dask cluster on loopback."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS_BATCH = Path(__file__).resolve().parent
WORKER_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS_BATCH)])}

UNICODE_NAME = "ward B/Gewebe ä 1 (ü).tif"
# key (path inside the archive) -> the state a batch must end with
EXPECTED_STATES = {
    "broken.svs": "failed",  # not a TIFF at all
    "damaged.svs": "failed",  # opens, but tiles are zeroed: fails when pixels are read
    "frozen/TCGA-CR-7395-01A-01-TS1.svs": "done",  # no µm/px in its metadata
    "notes.svs": "failed",  # a text file named like a slide
    "truncated.svs": "failed",  # a copy cut at 60%
    "ward A/..svs": "done",  # a name made of dots
    "ward A/CMU-1-Small-Region.svs": "done",
    "ward B/2024/CMU-1-Small-Region.svs": "done",  # same file name, other folder
    UNICODE_NAME: "done",
}


def build_archive(root: Path, slides: Path) -> Path:
    """Lay out the archive under ``root`` (plus a non-slide ``readme.txt``); return its folder."""
    archive = root / "archive"
    cmu = (slides / "CMU-1-Small-Region.svs").read_bytes()
    files = {
        "broken.svs": (slides / "broken.svs").read_bytes(),
        "damaged.svs": _zeroed(cmu, 0.30, 0.40),
        "frozen/TCGA-CR-7395-01A-01-TS1.svs": (slides / "TCGA-CR-7395-01A-01-TS1.svs").read_bytes(),
        "notes.svs": b"Slide list for ward B, not a slide.\n",
        "truncated.svs": cmu[: int(len(cmu) * 0.6)],
        "ward A/..svs": (slides / "OS-1-detail.ome.tif").read_bytes(),
        "ward A/CMU-1-Small-Region.svs": cmu,
        "ward B/2024/CMU-1-Small-Region.svs": cmu,
        UNICODE_NAME: (slides / "OS-1-detail.ome.tif").read_bytes(),
        "readme.txt": b"not matched by the pattern\n",
    }
    for key, data in files.items():
        path = archive / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return archive


def _zeroed(data: bytes, start: float, stop: float) -> bytes:
    out = bytearray(data)
    out[int(len(data) * start) : int(len(data) * stop)] = bytes(int(len(data) * stop) - int(len(data) * start))
    return bytes(out)


def read_status_csv(outdir: Path) -> dict[str, dict]:
    with open(outdir / "status.csv", newline="", encoding="utf-8") as handle:
        return {row["key"]: row for row in csv.DictReader(handle)}


def read_summary_csv(outdir: Path) -> dict[str, dict]:
    with open(outdir / "summary.csv", newline="", encoding="utf-8") as handle:
        return {row["key"]: row for row in csv.DictReader(handle)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(proc: subprocess.Popen) -> None:
    """Terminate a process started with start_new_session=True and everything it started."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # children left behind by a killed parent
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def dask_cluster(n_workers: int = 2, gpu_workers: int = 0):
    """A real ``dask scheduler`` and ``n_workers`` ``dask worker`` processes on 127.0.0.1.

    The first ``gpu_workers`` declare the resource ``GPU=1`` (no GPU is needed to declare it).
    """
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    procs = []
    try:
        procs.append(_popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                             "--port", str(port), "--dashboard-address", f"127.0.0.1:{free_port()}"]))  # fmt: skip
        for index in range(n_workers):
            resources = ["--resources", "GPU=1"] if index < gpu_workers else []
            procs.append(_popen([str(bin_dir / "dask"), "worker", address, "--host", "127.0.0.1",
                                 "--nworkers", "1", "--nthreads", "1", "--no-dashboard", *resources,
                                 "--local-directory", str(Path(os.environ.get("TMPDIR", "/tmp")))]))  # fmt: skip
        _wait_for_workers(address, n_workers)
        yield address
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)


def _popen(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=WORKER_ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def _wait_for_workers(address: str, n_workers: int, timeout: float = 60) -> None:
    from distributed import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            with Client(address, timeout="5s") as client:
                client.wait_for_workers(n_workers, timeout=max(1.0, deadline - time.monotonic()))
                return
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
