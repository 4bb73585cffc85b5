"""DICOM in, DICOM out: segment on a DICOM series gives the figures it gives on the source slide,
and its Segmentation and Bulk Annotations read back (highdicom, pydicom) to exactly prediction.zarr
and the GeoJSON, reference the slide's series, carry no private tags and pass dciodvfy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
import zarr
from pydicom.sr.codedict import codes
from shapely.geometry import shape
from toy_models import toy_threshold_bundle
from typer.testing import CliRunner

from wsipipe.cli.main import app
from wsipipe.dicom.outputs import SEG_MAX_PIXELS, seg_level
from wsipipe.dicom.series import resolve_series
from wsipipe.models import build_model
from wsipipe.models.io import model_metadata, save_model
from wsipipe.stages import SegmentConfig, segment

runner = CliRunner()
#: report.json keys that legitimately differ between two runs on the same pixels.
RUN_KEYS = {"slide", "timings_s", "tiles_per_s", "outputs", "run"}


def _segment(slide, outdir, **options):
    config = SegmentConfig(
        slide=slide, output=outdir, model=toy_threshold_bundle(), normalize="none", readers=0, qc="off", **options
    )
    return segment.run(config).to_json()


@pytest.fixture(scope="module")
def cmu_runs(dicom_series, tmp_path_factory):
    """segment on the CMU slide and on its DICOM series: (source outdir, DICOM outdir)."""
    source, folder = dicom_series("cmu")
    out = tmp_path_factory.mktemp("cmu-runs")
    _segment(source, out / "svs")
    _segment(folder, out / "dicom")
    return out / "svs", out / "dicom"


def _figures(outdir):
    report = json.loads((outdir / "report.json").read_text())
    return {k: v for k, v in report.items() if k not in RUN_KEYS}


def _labels(outdir, level=0):
    return zarr.open_group(str(outdir / "prediction.zarr" / "labels" / "classes"), mode="r", zarr_format=2)[str(level)][
        :
    ]


def dciodvfy_errors(path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        if os.environ.get("WSIPIPE_REQUIRE_DATA"):
            pytest.fail("dciodvfy (Debian dicom3tools) is missing; .ci/run installs it")
        pytest.skip("dciodvfy (dicom3tools) not installed")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_segment_figures_on_dicom_equal_those_on_the_source(cmu_runs):
    svs, dicom = cmu_runs
    assert _figures(dicom) == _figures(svs)
    assert _figures(svs)["tumour_area_mm2"] > 0
    np.testing.assert_array_equal(_labels(dicom), _labels(svs))
    assert not any(p.suffix == ".dcm" for p in svs.iterdir())  # no DICOM outputs for a non-DICOM slide


def test_segment_on_a_series_only_wsidicom_reads_gives_the_source_figures(dicom_series, tmp_path):
    source, folder = dicom_series("synth-jpegls")
    _segment(source, tmp_path / "svs")
    _segment(folder, tmp_path / "dicom", dicom_seg="none")
    assert _figures(tmp_path / "dicom") == _figures(tmp_path / "svs")
    assert not list((tmp_path / "dicom").glob("*.dcm"))


def test_binary_seg_reassembles_to_the_label_map_and_references_the_slide(cmu_runs, dicom_series):
    _, dicom = cmu_runs
    _, folder = dicom_series("cmu")
    base = pydicom.dcmread(resolve_series(folder).base.path, stop_before_pixels=True)
    seg = hd.seg.segread(dicom / "prediction.seg.dcm")
    labels = _labels(dicom)
    assert labels.size <= SEG_MAX_PIXELS and seg_level([labels.shape]) == 0
    np.testing.assert_array_equal(seg.get_total_pixel_matrix(combine_segments=True), labels)
    assert seg.SegmentationType == "BINARY" and [s.SegmentLabel for s in seg.SegmentSequence] == ["tumour"]
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == pytest.approx([1.0e-3, 1.0e-3])  # the toy model's 1 µm/px
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert seg.get(key) == base.get(key), key
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == base.SeriesInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == base.SOPInstanceUID
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    report = json.loads((dicom / "report.json").read_text())
    assert algorithm.AlgorithmName == report["model"]["name"]
    assert algorithm.AlgorithmVersion == f"wsipipe {report['wsipipe_version']}"
    assert report["model"]["sha256"] in algorithm.AlgorithmParameters
    assert seg.SeriesInstanceUID != base.SeriesInstanceUID
    # SEG pixel (0, 0) covers slide pixels [0, 2) x [0, 2) (1 µm/px over 0.499): the same place in mm
    seg_to_slide = hd.spatial.ImageToReferenceTransformer.for_image(seg, for_total_pixel_matrix=True)
    slide_to_slide = hd.spatial.ImageToReferenceTransformer.for_image(base, for_total_pixel_matrix=True)
    corners = np.array([[0.0, 0.0], [labels.shape[1], labels.shape[0]]])
    np.testing.assert_allclose(seg_to_slide(corners), slide_to_slide(corners * 1.0 / 0.499), atol=1e-9)
    assert seg.DimensionOrganizationType == "TILED_SPARSE" and seg.Rows == seg.Columns == 256
    assert seg.NumberOfFrames == -(-labels.shape[0] // 256) * -(-labels.shape[1] // 256)  # every tile, empty or not
    assert dciodvfy_errors(dicom / "prediction.seg.dcm") == []


def test_fractional_seg_holds_the_stored_probabilities(dicom_series, tmp_path):
    _, folder = dicom_series("synth-j2k")
    _segment(folder, tmp_path, dicom_seg="fractional")
    seg = hd.seg.segread(tmp_path / "prediction.seg.dcm")
    assert seg.SegmentationType == "FRACTIONAL" and seg.MaximumFractionalValue == 255
    stored = zarr.open_group(str(tmp_path / "prediction.zarr"), mode="r", zarr_format=2)["0"][1]
    read = seg.get_total_pixel_matrix(rescale_fractional=False)[..., 0]
    np.testing.assert_array_equal(read, stored)
    assert 0 < (stored > 127).mean() < 1  # both classes present: the comparison means something
    assert dciodvfy_errors(tmp_path / "prediction.seg.dcm") == []


def _rings(geojson_path):
    """(label, ring without its closing point, area in px²) per GeoJSON polygon ring, holes as their own label."""
    rings = []
    for feature in json.loads(geojson_path.read_text())["features"]:
        label = feature["properties"]["classification"]["name"]
        geometry = shape(feature["geometry"])
        for part in getattr(geometry, "geoms", [geometry]):
            rings.append((label, np.asarray(part.exterior.coords)[:-1], part.area))
            for hole in part.interiors:
                rings.append((f"{label} holes", np.asarray(hole.coords)[:-1], None))
    return rings


def _read_annotations(path, base):
    """(label, ring in level-0 px, area µm²) per annotation of a Bulk Annotations file, read with highdicom."""
    ann = hd.ann.annread(path)
    to_image = hd.spatial.ReferenceToImageTransformer.for_image(base, for_total_pixel_matrix=True)
    found = []
    for group in ann.get_annotation_groups():
        _, areas, _ = group.get_measurements(name=codes.SCT.Area)
        for ring, area in zip(group.get_graphic_data(ann.AnnotationCoordinateType), areas[:, 0]):
            found.append((group.label, to_image(ring)[:, :2], float(area)))
    return ann, found


def _check_annotations(ann_path, geojson_path, base):
    ann, found = _read_annotations(ann_path, base)
    expected = _rings(geojson_path)
    assert len(found) == len(expected) > 0
    spacing = base.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    um2 = float(spacing[0]) * float(spacing[1]) * 1e6
    by_label = {}
    for label, ring, area in found:
        by_label.setdefault(label, []).append((ring, area))
    for label, ring, area in expected:
        got_ring, got_area = by_label[label].pop(0)  # groups keep the file order
        np.testing.assert_allclose(got_ring, ring, rtol=0, atol=1e-6)
        if area is not None:
            assert got_area == pytest.approx(area * um2, rel=1e-6)
    assert ann.AnnotationCoordinateType == "3D" and ann.FrameOfReferenceUID == base.FrameOfReferenceUID
    assert ann.ReferencedSeriesSequence[0].SeriesInstanceUID == base.SeriesInstanceUID
    assert "SpecimenDescriptionSequence" in base and "SpecimenDescriptionSequence" not in ann  # not in the ANN IOD
    assert dciodvfy_errors(ann_path) == []


def test_region_annotations_equal_the_geojson_polygons(cmu_runs, dicom_series):
    _, dicom = cmu_runs
    base = pydicom.dcmread(resolve_series(dicom_series("cmu")[1]).base.path, stop_before_pixels=True)
    _check_annotations(dicom / "regions.ann.dcm", dicom / "regions.geojson", base)


def test_nuclei_command_writes_nuclei_annotations_equal_to_the_geojson(dicom_series, tmp_path):
    _, folder = dicom_series("synth-j2k")
    result = runner.invoke(app, ["nuclei", str(folder), "-o", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    base = pydicom.dcmread(resolve_series(folder).base.path, stop_before_pixels=True)
    _check_annotations(tmp_path / "nuclei.ann.dcm", tmp_path / "nuclei.geojson", base)
    algorithm = (
        hd.ann.annread(tmp_path / "nuclei.ann.dcm")
        .AnnotationGroupSequence[0]
        .AnnotationGroupAlgorithmIdentificationSequence[0]
    )
    assert algorithm.AlgorithmName == "classical"


def test_dicom_outputs_are_refused_for_a_non_dicom_slide(tmp_path, cmu_small_svs):
    slide = cmu_small_svs
    for args in (
        ["segment", str(slide), "-o", str(tmp_path / "a"), "--dicom-seg", "binary"],
        ["nuclei", str(slide), "-o", str(tmp_path / "a"), "--dicom"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "DICOM outputs need a DICOM source" in result.output and len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "a").exists()
    result = runner.invoke(app, ["segment", str(slide), "-o", str(tmp_path / "a"), "--dicom-seg", "sparse"])
    assert result.exit_code == 2 and "--dicom-seg 'sparse'" in result.output and not (tmp_path / "a").exists()


def test_patient_data_and_private_tags_stay_out_of_logs_names_and_outputs(dicom_series, tmp_path):
    _, folder = dicom_series("synth-j2k")
    tagged = tmp_path / "series"
    tagged.mkdir()
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = "Doe^Jane", "SECRET-4711"
        block = ds.private_block(0x0011, "ACME", create=True)
        block.add_new(0x01, "LO", "private-secret")
        ds.save_as(tagged / path.name)
    model = tmp_path / "tiny.safetensors"
    save_model(
        model,
        build_model("plain-unet", 2, {"base": 2}),
        model_metadata("plain-unet", {"base": 2}, ["background", "tumour"], mpp=2.0, tile_size=64),
    )
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["segment", str(tagged), "-o", str(out), "--model", str(model), "--nuclei", "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    assert "SECRET" not in result.output and "Doe" not in result.output
    written = list(out.rglob("*"))
    texts = [
        p.read_text(errors="ignore") for p in written if p.suffix in (".json", ".csv", ".html", ".geojson", ".xml")
    ]
    assert len(texts) >= 5 and all("SECRET-4711" not in text and "private-secret" not in text for text in texts)
    dicoms = sorted(p.name for p in written if p.suffix == ".dcm")
    assert dicoms == ["nuclei.ann.dcm", "prediction.seg.dcm", "regions.ann.dcm"] or dicoms == [
        "nuclei.ann.dcm",
        "prediction.seg.dcm",
    ]
    for name in dicoms:
        ds = pydicom.dcmread(out / name)
        assert ds.PatientID == "SECRET-4711"  # the Patient module the standard requires
        assert not any(element.tag.is_private for element in ds.iterall()), name
