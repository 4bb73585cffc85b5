"""Batch processing of slide archives on Dask: discovery, naming, state, the engine, the jobs."""

from wsipipe.batch.discovery import DEFAULT_PATTERN, SlideEntry, discover
from wsipipe.batch.jobs import JOBS, JobSpec, SkipSlide, info_job, job_spec
from wsipipe.batch.naming import output_name
from wsipipe.batch.runner import run_batch
from wsipipe.batch.state import SlideRecord, fingerprint, load_status

__all__ = [
    "DEFAULT_PATTERN",
    "JOBS",
    "JobSpec",
    "SkipSlide",
    "SlideEntry",
    "SlideRecord",
    "discover",
    "fingerprint",
    "info_job",
    "job_spec",
    "load_status",
    "output_name",
    "run_batch",
]
