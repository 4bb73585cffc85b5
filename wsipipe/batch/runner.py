"""The batch engine: one Dask task per slide, resumable state, atomic per-slide outputs.

Parallel by slide, never by tile: a task receives a slide's path and options, the worker reads
the slide itself and writes its outputs into a temporary folder under OUTDIR, renamed into place
when complete. Only the figures (a small dict) come back to this process, which alone writes the
status files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
import traceback
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from wsipipe.batch.discovery import SlideEntry
from wsipipe.batch.jobs import JobSpec, SkipSlide, load_job
from wsipipe.batch.state import SlideRecord, fingerprint, load_status, save_status
from wsipipe.batch.summary import write_summary
from wsipipe.errors import InvalidInputError, OutputError, SlideOpenError, WsipipeError
from wsipipe.files import check_regular_file, folder_lock, make_output_folder, remove_temporaries, write_atomic

PARTIAL_DIR = ".partial"  # in-progress slide folders; emptied when a batch starts
ERRORS_DIR = "errors"  # one traceback file per failed slide
LOCK_FILE = ".batch.lock"
RESULT_FILE = "result.json"  # in each finished slide folder: figures + the input it was made from
# A slide whose worker process dies this many times more is failed (it likely crashes its worker).
ALLOWED_FAILURES = 2
# Tasks handed to the cluster per worker thread: enough to keep workers busy, few enough that
# "running" in status.csv means "handed to the cluster", and new workers pick up work.
TASKS_PER_THREAD = 2
FINGERPRINT_THREADS = 8
# Status files are rewritten at most this often while slides finish (and always at the end): a
# killed batch loses at most this much of its status, and finished folders are re-adopted anyway.
STATUS_INTERVAL_S = 2.0
MAX_ERROR_CHARS = 500


class Reporter(Protocol):
    """What the engine tells its caller (the CLI draws a progress bar from it)."""

    def start(self, records: list[SlideRecord], todo: int) -> None: ...

    def slide_finished(self, record: SlideRecord) -> None: ...


@dataclass(frozen=True)
class Plan:
    """A slide to process with its converted options and the stamp its result must carry."""

    entry: SlideEntry
    options: dict
    stamp: dict


def run_batch(
    entries: list[SlideEntry],
    outdir: Path,
    job: JobSpec,
    options: dict | None = None,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    retry_failed: bool = False,
    limit: int | None = None,
    reporter: Reporter | None = None,
    parameter_names: Mapping[str, str] | None = None,
) -> list[SlideRecord]:
    """Process every slide not yet done; return all slides' records (also in OUTDIR/status.*).

    ``options`` are batch-wide job options (None values ignored), overridden per slide by the
    manifest's. Without ``scheduler`` a LocalCluster of ``workers`` processes is started.
    ``parameter_names``: how a slide's recorded error writes the parameters it names (the CLI: as flags).
    """
    if scheduler is not None and "://" not in scheduler:
        raise InvalidInputError(
            f"{{scheduler}} {scheduler!r}: give an address such as tcp://HOST:8786", parameter="scheduler"
        )
    batch_options = {k: v for k, v in (options or {}).items() if v is not None}
    for key in batch_options:
        if job.options is not None and key not in job.options:
            raise InvalidInputError(f"{{{key}}} does not apply to the {job.name!r} job", parameter=key)
    if job.prepare is not None:
        batch_options = job.prepare(batch_options)
    # Every manifest cell and device is checked before OUTDIR is made: a refused batch leaves nothing.
    slide_options = [job.convert_options({**batch_options, **e.options}, where=e.key) for e in entries]
    if scheduler is None:
        _check_local_devices(job, slide_options)
    outdir = Path(outdir).resolve()
    try:
        outdir.mkdir(parents=True)
        created = True  # by this run: mkdir is atomic, a batch started beside it finds it there
    except OSError:
        created = False  # there already, or not creatable (make_output_folder says why)
    make_output_folder(outdir)
    with folder_lock(outdir, LOCK_FILE, "another wsipipe batch is running on this folder"):
        records: list[SlideRecord] = []
        try:
            shutil.rmtree(outdir / PARTIAL_DIR, ignore_errors=True)
            remove_temporaries(outdir / ERRORS_DIR)  # as the lock did in OUTDIR: a killed batch's half-renamed files
            (outdir / PARTIAL_DIR).mkdir()
            records, plans = _plan(entries, slide_options, outdir, job, retry_failed, limit)
            save_status(outdir, records, job.ref)
            if reporter:
                reporter.start(records, len(plans))
            try:
                if plans:
                    _run_on_cluster(plans, records, outdir, job, workers, scheduler, reporter, parameter_names)
            finally:
                save_status(outdir, records, job.ref)
                write_summary(outdir, records)
                shutil.rmtree(outdir / PARTIAL_DIR, ignore_errors=True)
        except BaseException:
            if created and not any(r.state in ("done", "failed", "skipped") for r in records):
                # Failed or interrupted before any slide's result: leave no OUTDIR (under the lock,
                # so no other batch is writing it).
                shutil.rmtree(outdir, ignore_errors=True)
            raise
    return records


def _check_local_devices(job: JobSpec, slide_options: list[dict]) -> None:
    """Refuse up front a device the local workers cannot have (``cuda`` on a machine without a GPU):
    they would fail every slide. A scheduler's workers are checked once connected (``_wants_gpu``)."""
    if job.device_option is None:
        return
    from wsipipe.device import resolve_device

    for device in sorted({str(o.get(job.device_option, "auto")) for o in slide_options}):
        resolve_device(device)


def _plan(
    entries: list[SlideEntry],
    slide_options: list[dict],
    outdir: Path,
    job: JobSpec,
    retry_failed: bool,
    limit: int | None,
) -> tuple[list[SlideRecord], list[Plan]]:
    """Every slide's record, and the slides to (re)process (at most ``limit``), in INPUT order.

    Kept as they are: done/skipped slides whose input and settings are unchanged, and failed ones
    (unless ``retry_failed``). A slide left ``running`` by a killed batch is processed again,
    unless its finished folder already carries a result for this very input (it finished, but
    the batch died before recording it). A path that is not a readable regular file (missing, a
    FIFO, a link loop) fails here, never reaching a worker, whose job might block on it.
    """
    previous = load_status(outdir)
    with ThreadPoolExecutor(FINGERPRINT_THREADS) as pool:
        prints = list(pool.map(lambda e: fingerprint(e.path), entries))
    records: list = []
    plans: list = []
    for entry, converted, print_ in zip(entries, slide_options, prints):
        options = {**converted, "annotation": str(entry.annotation) if entry.annotation else None}
        config = hashlib.sha256(
            json.dumps({"job": job.ref, "options": options}, sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        stamp = {**print_, "config": config}
        prev = previous.get(entry.key)
        if prev is not None and {**prev.fingerprint(), "config": prev.config} == stamp:
            if prev.state == "skipped" or (prev.state == "done" and (outdir / prev.name).is_dir()):
                records.append(prev)
                continue
            if prev.state == "failed" and not retry_failed:
                records.append(prev)
                continue
        record = SlideRecord(key=entry.key, path=str(entry.path), name=entry.name, config=config, **print_)
        if (prev is None or prev.state in ("pending", "running")) and _adopt_finished(record, outdir, stamp):
            records.append(record)
            continue
        try:
            check_regular_file(entry.path, SlideOpenError)
        except SlideOpenError as exc:
            _apply_result(record, _failure(str(exc), ""), outdir)
            records.append(record)
            continue
        if limit is not None and len(plans) >= limit:
            records.append(prev if prev is not None and prev.state != "running" else record)
            continue
        records.append(record)
        plans.append(Plan(entry, options, stamp))
    return records, plans


def _adopt_finished(record: SlideRecord, outdir: Path, stamp: dict) -> bool:
    """Fill ``record`` from a finished slide folder made from this input with these settings."""
    try:
        result = json.loads((outdir / record.name / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if result.get("stamp") != stamp:
        return False
    _apply_result(record, result, outdir)
    return True


def _run_on_cluster(plans, records, outdir, job, workers, scheduler, reporter, parameter_names) -> None:
    import dask
    from distributed import LocalCluster, as_completed

    from wsipipe.batch.local_workers import IgnoreCtrlC
    from wsipipe.processes import helpers_ignore_ctrl_c

    by_key = {r.key: r for r in records}
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        if scheduler is None:
            with helpers_ignore_ctrl_c():  # the workers start ignoring Ctrl-C; a Ctrl-C in these seconds is lost
                cluster = LocalCluster(
                    n_workers=min(workers, len(plans)),
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=":0",
                    # Each slide's failure lands in status and errors/; Dask's own errors on the terminal are
                    # the echoes of a shutdown (a heartbeat or a gather cut by Ctrl-C), never the one line we owe.
                    silence_logs=logging.CRITICAL,
                    resources={"GPU": 1} if _wants_gpu(job, plans, None) else None,
                    plugins={IgnoreCtrlC()},
                )
        else:
            cluster = None
        try:
            client = _connect(cluster or scheduler)
            with client:
                gpu = _wants_gpu(job, plans, client)
                resources = {"GPU": 1} if gpu else None
                queue = iter(plans)
                in_flight = {}
                finished = as_completed()

                def submit_more() -> None:
                    capacity = max(2, TASKS_PER_THREAD * sum(client.nthreads().values()))
                    for plan in queue:
                        record = by_key[plan.entry.key]
                        record.state = "running"
                        record.started = _now()
                        future = client.submit(
                            process_slide, job.ref, str(plan.entry.path), plan.entry.name, str(outdir),
                            plan.options, plan.stamp, parameter_names,
                            key=f"wsipipe-slide-{plan.entry.name}-{uuid.uuid4().hex[:8]}",
                            pure=False, resources=resources,
                        )  # fmt: skip
                        in_flight[future.key] = plan
                        finished.add(future)
                        if len(in_flight) >= capacity:
                            return

                submit_more()
                save_status(outdir, records, job.ref)
                saved = time.monotonic()
                for future in finished:
                    plan = in_flight.pop(future.key)
                    record = by_key[plan.entry.key]
                    _apply_result(record, _result_of(future, scheduler, parameter_names), outdir)
                    future.release()
                    if time.monotonic() - saved >= STATUS_INTERVAL_S:
                        save_status(outdir, records, job.ref)
                        saved = time.monotonic()
                    if reporter:
                        reporter.slide_finished(record)
                    submit_more()
        finally:
            if cluster is not None:
                cluster.close()


def _connect(target):
    from distributed import Client

    if isinstance(target, str):
        try:
            return Client(target, timeout="15s")
        except (OSError, TimeoutError) as exc:
            raise WsipipeError(f"cannot reach the Dask scheduler at {target} ({exc})") from exc
    return Client(target)


def _wants_gpu(job: JobSpec, plans: list[Plan], client) -> bool:
    """True when the job runs on CUDA; 'auto' means: when a GPU is there (on a worker, or here)."""
    if job.device_option is None:
        return False
    devices = {p.options.get(job.device_option, "auto") for p in plans}
    if devices == {"cpu"}:
        return False
    if client is None:
        if "cuda" in devices:
            return True
        import torch

        return torch.cuda.is_available()
    has_gpu = any(w.get("resources", {}).get("GPU", 0) >= 1 for w in client.scheduler_info()["workers"].values())
    if "cuda" in devices and not has_gpu:
        raise WsipipeError(
            "the job runs on CUDA but no worker of the scheduler declares a GPU: start workers with "
            "'dask worker ... --resources GPU=1' or pass {device} cpu",
            parameter="device",
        )
    return has_gpu


def _result_of(future, scheduler: str | None, parameter_names: Mapping[str, str] | None = None) -> dict:
    """The task's result; a dead worker or a lost scheduler becomes a failure or a clear error."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    try:
        return future.result()
    except KilledWorker:
        return _failure(
            f"the worker processing this slide died {ALLOWED_FAILURES + 1} times "
            "(the slide may crash the reader or exhaust memory)",
            traceback.format_exc(),
        )
    except FutureCancelledError as exc:
        where = scheduler or "the local cluster"
        raise WsipipeError(f"lost the Dask scheduler ({where}); run the same command again to resume") from exc
    except Exception as exc:  # the task could not run at all (e.g. the job cannot be imported there)
        return _failure(_one_line(exc, parameter_names), traceback.format_exc())


def _apply_result(record: SlideRecord, result: dict, outdir: Path) -> None:
    """Copy a task's (or a found result file's) outcome into ``record``; keep the traceback file."""
    for name in ("state", "started", "finished", "seconds", "worker", "error", "figures"):
        setattr(record, name, result.get(name, getattr(record, name)))
    record.outputs = [f"{record.name}/{p}" for p in result.get("outputs", [])]
    error_file = outdir / ERRORS_DIR / f"{record.name}.txt"
    if result.get("traceback"):
        error_file.parent.mkdir(exist_ok=True)
        write_atomic(error_file, f"{record.path}\n{record.error}\n\n{result['traceback']}")
        record.traceback = error_file.relative_to(outdir).as_posix()
    else:
        error_file.unlink(missing_ok=True)
        record.traceback = ""


def process_slide(
    job_ref: str,
    slide: str,
    name: str,
    outdir: str,
    options: dict,
    stamp: dict,
    parameter_names: Mapping[str, str] | None = None,
) -> dict:
    """One slide on a worker: run the job in a fresh folder, rename it into place when it is complete.

    Never raises for the slide's own failures: they come back as ``state: failed`` with the
    message and traceback, so one bad slide costs one task and nothing else.
    """
    started = time.time()
    _one_thread_per_worker()
    partial = Path(outdir) / PARTIAL_DIR
    workdir = partial / f"{name}.{uuid.uuid4().hex[:8]}"
    base = {"started": _now(started), "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        if not partial.is_dir():
            raise OutputError(
                f"{outdir} is not visible on worker {base['worker']}: workers need the same shared filesystem"
            )
        workdir.mkdir()
        figures = _json_figures(load_job(job_ref)(Path(slide), workdir, dict(options)))
        outputs = sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*") if p.is_file())
        result: dict[str, object] = {**base, "state": "done", "figures": figures, "outputs": [*outputs, RESULT_FILE]}
        result.update(finished=_now(), seconds=round(time.time() - started, 3), error="")
        (workdir / RESULT_FILE).write_text(json.dumps({**result, "stamp": stamp}, indent=1))
        _install(workdir, Path(outdir) / name, partial)
        return result
    except SkipSlide as exc:
        reason = _one_line(exc.__cause__, parameter_names) if isinstance(exc.__cause__, WsipipeError) else str(exc)
        return {**base, **_failure(reason, ""), "state": "skipped", "seconds": round(time.time() - started, 3)}
    except Exception as exc:
        return {
            **base,
            **_failure(_one_line(exc, parameter_names), traceback.format_exc()),
            "seconds": round(time.time() - started, 3),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _one_thread_per_worker() -> None:
    """OpenCV to one thread, as Dask sets OMP/MKL (torch) for its workers: the batch is parallel by
    slide, one slide per worker process, and threads inside a slide would only oversubscribe cores."""
    import cv2

    cv2.setNumThreads(1)


def _install(workdir: Path, final: Path, partial: Path) -> None:
    """Rename the finished folder into place; an older result is moved aside first, then removed."""
    old = None
    if final.exists():
        old = partial / f"{final.name}.old.{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    os.rename(workdir, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _json_figures(figures) -> dict:
    """The job's figures as JSON scalars (numpy numbers unwrapped, NaN/inf -> None)."""
    if figures is None:
        return {}
    if not isinstance(figures, dict):
        raise TypeError(f"the job returned {type(figures).__name__}, not a dict of figures")
    clean = {}
    for key, value in figures.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"figure {key!r} is a {type(value).__name__}, not a number or text")
        clean[str(key)] = value
    return clean


def _failure(message: str, trace: str) -> dict:
    return {"state": "failed", "error": message, "traceback": trace, "finished": _now(), "figures": {}, "outputs": []}


def _one_line(exc: BaseException, parameter_names: Mapping[str, str] | None = None) -> str:
    text = exc.text(parameter_names) if isinstance(exc, WsipipeError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:MAX_ERROR_CHARS]


def _now(stamp: float | None = None) -> str:
    return datetime.fromtimestamp(stamp if stamp is not None else time.time(), UTC).isoformat(timespec="milliseconds")
