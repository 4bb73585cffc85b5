"""Batch over a DICOM archive: one slide per series however its files are spread, other DICOM
ignored, names from the series description (or UID), and the info job reading each series."""

from __future__ import annotations

import json
import shutil

import pydicom
from typer.testing import CliRunner

from wsipipe.batch.discovery import discover
from wsipipe.batch.naming import output_name
from wsipipe.cli.main import app
from wsipipe.dicom.series import resolve_series


def _archive(tmp_path, dicom_series):
    """cmu: levels in a/, label and overview in a/extra/; synth: in b/ with a description and a
    non-WSI DICOM beside it; bad.dcm: not DICOM at all."""
    root = tmp_path / "archive"
    _, cmu = dicom_series("cmu")
    series = resolve_series(cmu)
    for instance in series.instances:
        folder = root / "a" if instance.flavour in ("VOLUME", "THUMBNAIL") else root / "a" / "extra"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(instance.path, folder / f"{instance.flavour.lower()}.dcm")
    _, synth = dicom_series("synth-j2k")
    (root / "b").mkdir()
    for path in synth.iterdir():
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = "H&E block 1/2"
        ds.save_as(root / "b" / path.name)
    other = pydicom.dcmread(next(synth.iterdir()), stop_before_pixels=True)
    other.SOPClassUID = other.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation
    other.save_as(root / "b" / "prediction.seg.dcm")
    (root / "bad.dcm").write_bytes(b"not dicom")
    return root, series


def test_one_entry_per_series_named_by_description_or_uid(tmp_path, dicom_series):
    root, cmu = _archive(tmp_path, dicom_series)
    entries = {e.key: e for e in discover(root)}
    assert sorted(entries) == ["a/volume.dcm", "b/" + resolve_series(root / "b").base.path.name, "bad.dcm"]
    assert entries["a/volume.dcm"].name == output_name(
        "a/volume.dcm", cmu.uid if not cmu.description else cmu.description
    )
    synth = next(e for k, e in entries.items() if k.startswith("b/"))
    assert synth.name.startswith("H_E_block_1_2-")
    assert entries["bad.dcm"].name.startswith("bad-")


def test_info_job_reads_each_series_and_reports_the_bad_file(tmp_path, dicom_series):
    root, _ = _archive(tmp_path, dicom_series)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["batch", str(root), "-o", str(out), "--job", "info", "--workers", "1", "--quiet"])
    assert result.exit_code == 1, result.output  # bad.dcm failed, the two series did not
    assert "1 of 3 slides failed" in result.output
    infos = sorted(out.glob("*/info.json"))
    assert len(infos) == 2
    assert sorted(json.loads(p.read_text())["width"] for p in infos) == [1500, 2220]
