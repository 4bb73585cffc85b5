"""Per-slide state of a batch, kept in OUTDIR as ``status.json`` (read back) and ``status.csv``.

Both are rewritten atomically (temporary file, fsync, rename), so a batch killed at any moment
leaves either the previous or the new status, never a torn one.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG

from wsipipe.errors import OutputError
from wsipipe.files import write_atomic

STATES = ("pending", "running", "done", "failed", "skipped")
STATUS_JSON = "status.json"
STATUS_CSV = "status.csv"
STATUS_VERSION = 1
#: The largest status.json read (about 1 kB a slide: a million slides).
MAX_STATUS_BYTES = 1 << 30
# How much of the start of a slide the fingerprint hashes: catches a re-scanned or re-copied slide
# whose size and time happen to match, without reading whole slides on every run.
HEAD_BYTES = 4 * 1024 * 1024

CSV_COLUMNS = (
    "name", "key", "state", "path", "size", "mtime_ns", "head_sha256", "started", "finished",
    "seconds", "worker", "outputs", "error", "traceback",
)  # fmt: skip


@dataclass
class SlideRecord:
    """What is known about one slide. ``outputs`` and ``traceback`` are relative to OUTDIR."""

    key: str
    path: str
    name: str
    state: str = "pending"
    size: int | None = None
    mtime_ns: int | None = None
    head_sha256: str | None = None
    #: Hash of the job and its options: a slide done with other settings is done again.
    config: str = ""
    started: str = ""
    finished: str = ""
    seconds: float | None = None
    worker: str = ""
    outputs: list[str] = field(default_factory=list)
    error: str = ""
    traceback: str = ""
    figures: dict = field(default_factory=dict)

    def fingerprint(self) -> dict:
        return {"size": self.size, "mtime_ns": self.mtime_ns, "head_sha256": self.head_sha256}


def fingerprint(path: Path) -> dict:
    """Size, modification time (ns) and SHA-256 of the first HEAD_BYTES; all None when unreadable
    or not a regular file (opened without blocking, so a FIFO cannot hold the batch)."""
    unknown = {"size": None, "mtime_ns": None, "head_sha256": None}
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            stat = os.fstat(handle.fileno())
            if not S_ISREG(stat.st_mode):
                return unknown
            digest = hashlib.sha256(handle.read(HEAD_BYTES))
    except OSError:
        return unknown
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head_sha256": digest.hexdigest()}


def load_status(outdir: Path) -> dict[str, SlideRecord]:
    """Records of an earlier run by slide key; empty when OUTDIR holds none."""
    path = outdir / STATUS_JSON
    if not os.path.lexists(path):
        return {}
    try:
        if not path.is_file():  # a FIFO would hang the read, a dangling link has nothing
            raise ValueError("not a regular file")
        if path.stat().st_size > MAX_STATUS_BYTES:
            raise ValueError(f"over {MAX_STATUS_BYTES >> 20} MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
        fields = {f.name for f in dataclasses.fields(SlideRecord)}
        records = [SlideRecord(**{k: v for k, v in item.items() if k in fields}) for item in data["slides"]]
        for record in records:
            _check_types(record)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise OutputError(f"{path}: not a wsipipe batch status file ({exc}); use another OUTDIR") from exc
    return {r.key: r for r in records}


#: The type of each SlideRecord field that is not text, as ``save_status`` writes it.
_FIELD_TYPES: dict = {
    "outputs": list,
    "figures": dict,
    "size": int | None,
    "mtime_ns": int | None,
    "head_sha256": str | None,
    "seconds": float | int | None,
}


def _check_types(record: SlideRecord) -> None:
    """The types ``save_status`` writes (a foreign file's list or number would fail far from here)."""
    for item in dataclasses.fields(record):
        value = getattr(record, item.name)
        if not isinstance(value, _FIELD_TYPES.get(item.name, str)):
            raise TypeError(f"slide {record.key!r}: {item.name} is {type(value).__name__}")


def save_status(outdir: Path, records: list[SlideRecord], job: str) -> None:
    """Write ``status.json`` and ``status.csv`` for ``records`` (in their order)."""
    payload = {"version": STATUS_VERSION, "job": job, "slides": [dataclasses.asdict(r) for r in records]}
    write_atomic(outdir / STATUS_JSON, json.dumps(payload, indent=1, ensure_ascii=False))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for r in records:
        row = dataclasses.asdict(r)
        row["outputs"] = ";".join(r.outputs)
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
    write_atomic(outdir / STATUS_CSV, buffer.getvalue())
