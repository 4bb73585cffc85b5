"""A slide's recorded error names the parameters as the caller writes them: flags from the CLI,
Python names from a Python caller."""

from __future__ import annotations

from wsipipe.batch.runner import PARTIAL_DIR, process_slide

NO_MPP = "TCGA-CR-7395-01A-01-TS1.svs"
JOB = "batch_test_jobs:needs_mpp_job"


def test_a_slides_error_names_the_parameter_as_the_caller_spells_it(slides_dir, tmp_path):
    (tmp_path / PARTIAL_DIR).mkdir()
    slide = str(slides_dir / NO_MPP)
    as_python = process_slide(JOB, slide, "s", str(tmp_path), {}, {})
    as_cli = process_slide(JOB, slide, "s", str(tmp_path), {}, {}, {"mpp_override": "--mpp-override"})
    remedy = "the slide records no µm/px; pass {} X (µm per pixel at level 0)"
    assert as_python["state"] == as_cli["state"] == "failed"
    assert as_python["error"] == f"{slide}: {remedy.format('mpp_override')}"
    assert as_cli["error"] == f"{slide}: {remedy.format('--mpp-override')}"
    assert not any((tmp_path / PARTIAL_DIR).iterdir())  # the slide's work folder is gone


def test_a_slide_skipped_by_qc_says_why_as_the_caller_spells_it(tritc_ndpi, tmp_path):
    (tmp_path / PARTIAL_DIR).mkdir()
    job, slide = "wsipipe.batch.jobs:segment_job", str(tritc_ndpi)
    as_python = process_slide(job, slide, "s", str(tmp_path), {"qc": "auto"}, {})
    as_cli = process_slide(job, slide, "s", str(tmp_path), {"qc": "auto"}, {}, {"qc": "--qc"})
    assert as_python["state"] == as_cli["state"] == "skipped"
    assert as_python["error"].startswith(f"{slide}: not brightfield") and as_cli["error"].startswith(slide)
    assert as_python["error"].endswith("; pass qc off to run anyway")
    assert as_cli["error"] == as_python["error"].replace("pass qc off", "pass --qc off")
