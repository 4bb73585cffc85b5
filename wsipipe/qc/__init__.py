"""Slide quality control: artefact masks (out of focus, pen ink, fold, bubble / dark debris, over-
and under-exposure), a stain estimate, brightfield or not, and a usable verdict.

    result = run_qc(reader)                 # QCResult: masks on the tissue-thumbnail grid + summary
    summary = qc_slide(path, outdir)        # wsipipe qc: qc.json, qc.zarr, qc.png

The detectors (``wsipipe.qc.detectors``) are small functions on numpy images with sizes in µm.
"""

from __future__ import annotations

import os
from pathlib import Path

from wsipipe.qc.stage import ARTEFACTS, QCResult, qc_columns, run_qc

__all__ = ["ARTEFACTS", "QCResult", "qc_columns", "qc_slide", "run_qc"]


def qc_slide(slide_path: str | os.PathLike, outdir: str | os.PathLike, *, backend: str | None = None,
             mpp_override: float | None = None) -> dict:
    """Run QC on a slide and write qc.json, qc.zarr and qc.png into ``outdir``; returns the summary.

    The slide is opened and checked before the folder is made, and every file is written under a
    temporary name, so a refused or failed run leaves nothing half-written.
    """
    from wsipipe.files import folder_lock, make_output_folder
    from wsipipe.qc.outputs import write_qc_outputs
    from wsipipe.slide import open_slide

    with open_slide(Path(slide_path), backend=backend, mpp_override=mpp_override) as reader:
        result = run_qc(reader)
    outdir = make_output_folder(outdir)
    with folder_lock(outdir):
        write_qc_outputs(result, outdir)
    return result.summary
