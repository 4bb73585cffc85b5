"""Per-slide jobs used by the batch tests (imported by name on Dask workers: keep them importable).

Workers find this module because the tests put ``tests/batch`` on their PYTHONPATH.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from wsipipe.batch.jobs import SkipSlide, info_job

SLOW_SECONDS = 0.5


def slow_info_job(slide_path: Path, workdir: Path, options: dict) -> dict:
    """info_job after a pause, so a batch can be killed while slides are in flight."""
    time.sleep(SLOW_SECONDS)
    return info_job(slide_path, workdir, {})


def marked_sleep_job(slide_path: Path, workdir: Path, options: dict) -> dict:
    """Leave ``<marker_dir>/<pid>.<ns>.start`` holding the slide's path, sleep ``sleep`` s, run info_job."""
    marker = Path(options["marker_dir"]) / f"{os.getpid()}.{time.time_ns()}.start"
    marker.write_text(str(slide_path))
    time.sleep(float(options["sleep"]))
    return {**info_job(slide_path, workdir, {}), "pid": os.getpid()}


def skip_text_job(slide_path: Path, workdir: Path, options: dict) -> dict:
    """Skips slides whose name holds 'skip'; otherwise returns the file size as a figure."""
    if "skip" in slide_path.name:
        raise SkipSlide("named to be skipped")
    (workdir / "size.txt").write_text(str(slide_path.stat().st_size))
    return {"size": slide_path.stat().st_size, "nuclei_count": None, "tumour_fraction": 0.25}


def device_job(slide_path: Path, workdir: Path, options: dict) -> dict:
    """Reports which process ran it and the device it was asked for (no GPU is touched)."""
    return {"pid": os.getpid(), "device": options.get("device")}


def sleepy_info_job(slide_path: Path, workdir: Path, options: dict) -> dict:
    """info_job after 3 s, so a batch can be interrupted with every worker busy."""
    time.sleep(3)
    return info_job(slide_path, workdir, {})


def needs_mpp_job(slide_path: Path, workdir: Path, options: dict) -> dict:
    """Fails on a slide without µm/px, as any job needing the scale does (the error names a parameter)."""
    from wsipipe.slide import open_slide

    with open_slide(slide_path) as reader:
        return {"mpp": reader.mpp}
