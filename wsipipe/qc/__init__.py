"""Slide quality control: artefact masks (out of focus, pen ink, fold, bubble / dark debris, over-
and under-exposure), a stain estimate, brightfield or not, and a usable verdict.

    result = run_qc(reader)                 # QCResult: masks on the tissue-thumbnail grid + summary
    result = qc_slide(QcConfig(slide=path, output=outdir))   # wsipipe qc: qc.json, qc.zarr, qc.png

The detectors (``wsipipe.qc.detectors``) are small functions on numpy images with sizes in µm.
"""

from __future__ import annotations

from wsipipe.qc.stage import ARTEFACTS, QCResult, qc_columns, run_qc
from wsipipe.stages.qc import QcConfig, QcResult

__all__ = ["ARTEFACTS", "QCResult", "qc_columns", "qc_slide", "run_qc"]


def qc_slide(config: QcConfig) -> QcResult:
    """Run QC on ``config.slide`` and write qc.json, qc.zarr and qc.png into ``config.output``
    (``wsipipe.stages.qc.run``, which says what).

    The slide is opened and checked before the folder is made, and every file is written under a
    temporary name, so a refused or failed run leaves nothing half-written.
    """
    from wsipipe.files import folder_lock, make_output_folder
    from wsipipe.qc.outputs import write_qc_outputs
    from wsipipe.slide import open_slide

    with open_slide(config.slide, backend=config.backend, mpp_override=config.mpp_override) as reader:
        found = run_qc(reader)
    outdir = make_output_folder(config.output)
    with folder_lock(outdir):
        write_qc_outputs(found, outdir)
    return QcResult(output=outdir, **found.summary)
