"""wsipipe segment: known areas on a synthetic slide, resume after a kill, no tissue, real slide, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import shapely
import tifffile
import torch
import zarr
from lxml import etree
from toy_models import toy_threshold_bundle
from typer.testing import CliRunner

from wsipipe import segment as segment_module
from wsipipe.cli.main import app
from wsipipe.errors import InvalidInputError
from wsipipe.inference import default_overlap
from wsipipe.models import build_model
from wsipipe.models.io import ModelBundle, model_metadata, save_model
from wsipipe.nuclei.outputs import read_labels
from wsipipe.stages import SegmentConfig, segment

MPP = 0.5  # level 0 of the synthetic slides
TISSUE = (200, 200, 2200, 1800)  # x0, y0, x1, y1 in level-0 px: 2000 x 1600 px = 0.8 mm²
TUMOUR = (600, 600, 1400, 1200)  # 800 x 600 px = 0.12 mm²
PINK, PURPLE = (230, 150, 200), (100, 50, 150)


def _write_slide(path, tissue: bool = True):
    image = np.full((2000, 2400, 3), 255, np.uint8)
    if tissue:
        x0, y0, x1, y1 = TISSUE
        image[y0:y1, x0:x1] = PINK
        x0, y0, x1, y1 = TUMOUR
        image[y0:y1, x0:x1] = PURPLE
    tifffile.imwrite(
        path,
        image,
        tile=(256, 256),
        photometric="rgb",
        compression="zlib",
        resolution=(1e4 / MPP, 1e4 / MPP),
        resolutionunit="CENTIMETER",
    )
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return _write_slide(tmp_path_factory.mktemp("slide") / "synthetic.tif")


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    net = build_model("plain-unet", 2, {"base": 2})
    save_model(path, net, model_metadata("plain-unet", {"base": 2}, ["background", "tumour"], mpp=2.0, tile_size=64))
    return path


def _run(slide, outdir, **kwargs):
    options = {"model": toy_threshold_bundle(), "normalize": "none", "readers": 0, "batch_size": 8, "qc": "off"}
    options.update(kwargs)
    return segment.run(SegmentConfig(slide=slide, output=outdir, **options)).to_json()


def test_known_tumour_and_tissue_areas_and_all_outputs(slide, tmp_path):
    report = _run(slide, tmp_path)
    assert report["tumour_area_mm2"] == pytest.approx(0.12, rel=1e-9)  # 400 x 300 px of 1 µm²
    assert report["tissue_area_mm2"] == pytest.approx(0.8, rel=0.03)
    assert report["tumour_fraction"] == pytest.approx(0.15, rel=0.03)
    assert report["n_tiles"] > 0 and report["model"]["name"] == "toy" and len(report["model"]["sha256"]) == 64
    assert {"load", "tissue", "inference", "pyramid", "regions", "report"} <= set(report["timings_s"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        ".wsipipe.lock",
        "overlay.png",
        "prediction.zarr",
        "regions.geojson",
        "regions.xml",
        "report.html",
        "report.json",
    ]
    assert json.loads((tmp_path / "report.json").read_text())["n_tiles"] == report["n_tiles"]

    # The stitched label map equals the per-pixel rule applied to the slide at 1 µm/px.
    labels = zarr.open_array(str(tmp_path / "prediction.zarr" / "labels" / "classes" / "0"), mode="r")[:]
    expected = np.zeros((1000, 1200), np.uint8)
    expected[300:600, 300:700] = 1
    assert np.array_equal(labels, expected)
    attrs = json.loads((tmp_path / "prediction.zarr" / ".zattrs").read_text())
    assert attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]

    features = json.loads((tmp_path / "regions.geojson").read_text())["features"]
    assert len(features) == 1 and features[0]["properties"]["classification"]["name"] == "Tumor"
    xs = [p[0] for p in features[0]["geometry"]["coordinates"][0]]
    ys = [p[1] for p in features[0]["geometry"]["coordinates"][0]]
    # Level-0 pixel edges, within the stated simplification tolerance (µm -> level-0 px).
    tolerance_px = report["regions"]["simplify_um"] / MPP
    assert tolerance_px == 2.0
    assert (min(xs), min(ys), max(xs), max(ys)) == pytest.approx(TUMOUR, abs=tolerance_px)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    xml = etree.parse(str(tmp_path / "regions.xml"), parser)
    assert len(xml.findall(".//Annotation")) == 1


def test_reader_processes_give_the_same_prediction(slide, tmp_path):
    _run(slide, tmp_path / "inline")
    _run(slide, tmp_path / "procs", readers=2)
    for path in ("0", "labels/classes/0"):
        a = zarr.open_array(str(tmp_path / "inline" / "prediction.zarr" / path), mode="r")[:]
        b = zarr.open_array(str(tmp_path / "procs" / "prediction.zarr" / path), mode="r")[:]
        assert np.array_equal(a, b)


def test_killed_run_resumes_and_gives_the_same_outputs(slide, tmp_path, monkeypatch):
    monkeypatch.setattr(segment_module, "CHUNK", 128)  # several bands on this small slide
    reference = _run(slide, tmp_path / "reference")
    calls = {"n": 0}
    original = segment_module.Runner.__call__

    def dying(self, tiles):
        calls["n"] += 1
        if calls["n"] == 8:  # at least five batches stitched (two may still wait), whatever the load
            raise KeyboardInterrupt
        return original(self, tiles)

    monkeypatch.setattr(segment_module.Runner, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(slide, tmp_path / "resumed")
    partial = tmp_path / "resumed" / "prediction.zarr.partial"
    journal = json.loads((partial / "stitch_journal.json").read_text())
    assert 0 < journal["done_rows"] < 1000 and not (tmp_path / "resumed" / "prediction.zarr").exists()
    (partial / ".stitch_journal.json.wsipipe-0123abcd.tmp").write_text("{")  # as a SIGKILL mid-rewrite leaves it
    (tmp_path / "resumed" / ".report.json.wsipipe-89abcdef.tmp").write_text("{")  # and mid-write of a report file

    seen = {"tiles": 0}

    def counting(self, tiles):
        seen["tiles"] += len(tiles)
        return original(self, tiles)

    monkeypatch.setattr(segment_module.Runner, "__call__", counting)
    resumed = _run(slide, tmp_path / "resumed")
    assert 0 < seen["tiles"] < reference["n_tiles"]  # finished bands were not run again
    assert not partial.exists()
    assert sorted(os.listdir(tmp_path / "resumed" / "prediction.zarr")) == sorted(
        os.listdir(tmp_path / "reference" / "prediction.zarr")
    )
    assert sorted(os.listdir(tmp_path / "resumed")) == sorted(os.listdir(tmp_path / "reference"))
    for path in ("0", "1", "labels/classes/0", "labels/classes/1"):
        a = zarr.open_array(str(tmp_path / "reference" / "prediction.zarr" / path), mode="r")[:]
        b = zarr.open_array(str(tmp_path / "resumed" / "prediction.zarr" / path), mode="r")[:]
        assert np.array_equal(a, b)
    assert resumed["tumour_area_mm2"] == reference["tumour_area_mm2"]
    a = json.loads((tmp_path / "reference" / "regions.geojson").read_text())
    b = json.loads((tmp_path / "resumed" / "regions.geojson").read_text())
    assert a == b


@pytest.mark.slow
def test_column_strips_give_the_same_prediction_and_resume_strip_by_strip(
    slide, tiny_model_file, tmp_path, monkeypatch
):
    """Stitching strip by strip (memory bounded on wide slides) changes no pixel, even after a kill."""
    monkeypatch.setattr(segment_module, "CHUNK", 128)
    options = {"model": tiny_model_file, "batch_size": 4, "overlap": 8}  # with this layout call 14 is in strip 2
    reference = _run(slide, tmp_path / "reference", **options)  # 600 px wide: one strip
    monkeypatch.setattr(segment_module, "STRIP_WIDTH", 256)  # three strips
    original = segment_module.Runner.__call__
    calls = {"n": 0}

    def dying(self, tiles):
        calls["n"] += 1
        if calls["n"] == 14:  # in the second strip
            raise KeyboardInterrupt
        return original(self, tiles)

    monkeypatch.setattr(segment_module.Runner, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(slide, tmp_path / "strips", **options)
    journals = sorted((tmp_path / "strips" / "prediction.zarr.partial").glob("stitch_journal-*.json"))
    assert [p.name for p in journals] == [f"stitch_journal-{a}-{b}.json" for a, b in ((0, 256), (256, 512), (512, 600))]
    first, second, third = (json.loads(p.read_text()) for p in journals)
    assert first["complete"] and not second["complete"] and third["done_rows"] == 0
    monkeypatch.setattr(segment_module.Runner, "__call__", original)
    stripped = _run(slide, tmp_path / "strips", **options)
    for path in ("0", "1", "labels/classes/0", "labels/classes/1"):
        a = zarr.open_array(str(tmp_path / "reference" / "prediction.zarr" / path), mode="r")[:]
        b = zarr.open_array(str(tmp_path / "strips" / "prediction.zarr" / path), mode="r")[:]
        assert np.array_equal(a, b), path
    assert stripped["tumour_area_mm2"] == reference["tumour_area_mm2"]


def test_slide_without_tissue_gives_a_report_saying_so(tmp_path):
    blank = _write_slide(tmp_path / "blank.tif", tissue=False)
    report = _run(blank, tmp_path / "out")
    assert report["n_tiles"] == 0 and report["tissue_area_mm2"] == 0 and report["tumour_fraction"] is None
    assert "No tissue" in report["message"]
    assert json.loads((tmp_path / "out" / "regions.geojson").read_text())["features"] == []
    assert "No tissue" in (tmp_path / "out" / "report.html").read_text()


def test_real_slide_with_slide_level_macenko_and_a_model_file(tiny_model_file, tmp_path, cmu_small_svs, stain_dir):
    report = _run(
        cmu_small_svs,
        tmp_path,
        model=tiny_model_file,
        normalize="macenko",
        target=stain_dir / "tiatoolbox_target.png",
        batch_size=16,
    )
    assert report["n_tiles"] > 10 and 0.5 < report["tissue_area_mm2"] < 1.7  # the slide is 1.1 x 1.5 mm
    assert report["model"]["name"] == "tiny.safetensors" and report["normalize"] == "macenko"
    assert report["prediction_shape"] == [2, 741, 554]  # 2967 x 2220 px at 0.499 -> 2.0 µm/px, rounded up
    assert "stain" in report["timings_s"]


runner = CliRunner()


def test_cli_errors_are_one_line(slide, tiny_model_file, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a model at all")
    cases = [
        (["--model", str(corrupt)], 2, "not a safetensors model file"),
        (["--model", str(tmp_path / "missing.safetensors")], 2, "no such model file"),
        (["--model", str(tiny_model_file), "--device", "cuda"], 2, "no CUDA GPU"),
        (["--model", str(tiny_model_file), "--normalize", "sepia"], 2, "--normalize 'sepia'"),
        (["--model", str(tiny_model_file), "--overlap", "32"], 2, "--overlap 32"),
    ]
    if torch.cuda.is_available():
        cases.pop(2)
    for extra, code, message in cases:
        result = runner.invoke(app, ["segment", str(slide), "-o", str(tmp_path / "out"), "--quiet", *extra])
        assert result.exit_code == code, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "out").exists(), extra  # a refused run leaves nothing behind

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = runner.invoke(app, ["segment", str(slide), "-o", str(blocker / "out"), "--model", str(tiny_model_file)])
    assert result.exit_code == 2 and "cannot create the output folder" in result.output

    fine = tmp_path / "fine.safetensors"
    save_model(
        fine,
        build_model("plain-unet", 2, {"base": 2}),
        model_metadata("plain-unet", {"base": 2}, ["background", "tumour"], mpp=0.1, tile_size=64),
    )
    result = runner.invoke(app, ["segment", str(slide), "-o", str(tmp_path / "o2"), "--model", str(fine)])
    assert result.exit_code == 2 and "finer than the slide's level 0" in result.output
    assert not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_cli_runs_end_to_end_in_a_subprocess(slide, tiny_model_file, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsipipe",
            "segment",
            str(slide),
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(tiny_model_file),
            "--normalize",
            "none",
            "--workers",
            "1",
            "--device",
            "auto",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    if not torch.cuda.is_available():
        assert "No CUDA GPU found; running on the CPU." in proc.stderr
    assert (
        "tiles; tissue" in proc.stdout and "tiles; tissue" not in proc.stderr
    )  # the result on stdout, notes on stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["device"] in ("cpu", "cuda") and report["n_tiles"] > 0


def test_tile_store_at_the_models_scale_is_reused(slide, tmp_path):
    from wsipipe.stages import TileConfig, tile

    store = tmp_path / "tiles.zarr"
    tile.run(
        TileConfig(
            slide=slide,
            output=store,
            mpp=1.0,
            tile_size=128,
            overlap=default_overlap(128),
            tissue_threshold=0.0,
            readers=1,
            qc="off",
        )
    )
    fresh = _run(slide, tmp_path / "fresh")
    reused = _run(slide, tmp_path / "reused", tiles=store, readers=2)  # readers are not started
    assert reused["n_tiles"] == fresh["n_tiles"]
    for path in ("0", "labels/classes/0"):
        a = zarr.open_array(str(tmp_path / "fresh" / "prediction.zarr" / path), mode="r")[:]
        b = zarr.open_array(str(tmp_path / "reused" / "prediction.zarr" / path), mode="r")[:]
        assert np.array_equal(a, b)
    wrong = tmp_path / "wrong.zarr"
    tile.run(TileConfig(slide=slide, output=wrong, mpp=2.0, tile_size=128, overlap=0, readers=1, qc="off"))
    with pytest.raises(segment_module.InvalidInputError, match="the model needs 128 px at 1 µm/px"):
        _run(slide, tmp_path / "bad", tiles=wrong)


EXAMPLE_SLIDE = segment_module.BUNDLED_MODEL.parents[3] / "examples" / "data" / "CMU-1-Small-Region.svs"


def _nuclei_rows(outdir):
    import csv

    with open(outdir / "nuclei.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_cli_nuclei_figures_agree_with_the_nuclei_csv(tiny_model_file, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "segment",
            str(EXAMPLE_SLIDE),
            "-o",
            str(out),
            "--model",
            str(tiny_model_file),
            "--normalize",
            "none",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--nuclei",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    for name in ("nuclei.geojson", "nuclei.csv", "labels.zarr", "nuclei.json", "report.html"):
        assert (out / name).exists() and name in report["outputs"]
    assert not list(out.glob("*.partial")) and not list(out.glob(".*partial"))
    rows = _nuclei_rows(out)
    n = report["nuclei_count"]
    assert n == len(rows) == read_labels(out / "labels.zarr")[0][:].max() > 1000
    features = json.loads((out / "nuclei.geojson").read_text())["features"]
    assert len(features) == n
    assert all(shapely.geometry.shape(f["geometry"]).is_valid for f in features)  # 24 of 2524 were not
    assert report["nuclei_method"] == "classical" and f"{n} nuclei" in result.output
    assert report["nuclei_per_mm2"] == pytest.approx(n / report["nuclei_tissue_mm2"], rel=1e-5)
    malignant = [r for r in rows if r["in_tumour"] == "1"]
    assert report["tumour_nuclei_count"] == len(malignant) > 0
    assert report["nuclei_per_mm2_tumour"] == pytest.approx(len(malignant) / report["nuclei_tumour_mm2"], rel=1e-5)
    nuclei = json.loads((out / "nuclei.json").read_text())
    assert report["cellularity"] == nuclei["cellularity"] and 0 < report["cellularity"] <= 1
    tiles = [t for t in nuclei["tiles"] if t["cellularity"] is not None]
    assert all(t["cellularity"] <= 1 for t in tiles)
    assert sum(t["cellularity"] * t["tumour_mm2"] for t in tiles) == pytest.approx(
        nuclei["cellularity"] * nuclei["tumour_mm2"], rel=1e-4
    )  # each nuclear pixel counted once
    assert report["nuclei_tissue_mm2"] == pytest.approx(report["tissue_area_mm2"], rel=0.02)  # segment's tissue
    page = (out / "report.html").read_text()
    assert "cellularity per tile" in page and page.count("data:image/png;base64") == 3


def test_nuclei_in_the_predicted_tumour_are_the_malignant_ones(tmp_path):
    """The toy model calls dark (nuclei-rich) tissue tumour: part of the slide, so the flags must follow it."""
    report = _run(EXAMPLE_SLIDE, tmp_path, nuclei=True)
    assert 0 < report["tumour_nuclei_count"] < report["nuclei_count"]
    assert 0 < report["nuclei_tumour_mm2"] < report["nuclei_tissue_mm2"]
    labels = zarr.open_array(str(tmp_path / "prediction.zarr" / "labels" / "classes" / "0"), mode="r")[:]
    scale = 1.0 / report["mpp"]  # level-0 px per prediction px (the toy model works at 1 µm/px)
    checked = 0
    for row in _nuclei_rows(tmp_path):
        y, x = int(float(row["centroid_y"]) / scale), int(float(row["centroid_x"]) / scale)
        around = labels[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
        if around.min() == around.max():  # not within a pixel of the tumour's edge
            assert int(row["in_tumour"]) == around[0, 0], row
            checked += 1
    assert checked > 0.8 * report["nuclei_count"]


def test_nuclei_model_that_is_not_a_nuclei_model_is_refused_up_front(tiny_model_file, tmp_path):
    result = runner.invoke(
        app, ["segment", str(EXAMPLE_SLIDE), "-o", str(tmp_path / "out"), "--nuclei-model", str(tiny_model_file)]
    )
    assert result.exit_code == 2 and "not a nuclei (usnet) model" in result.output
    assert not (tmp_path / "out").exists()


def _recording(bundle: ModelBundle, method: str) -> ModelBundle:
    return ModelBundle(bundle.model, {**bundle.metadata, "stain_normalisation": {"method": method, "target": None}})


def test_default_normalisation_is_what_the_model_records(tmp_path, cmu_small_svs):
    real = cmu_small_svs
    unrecorded = _run(real, tmp_path / "unrecorded", normalize="model")
    assert unrecorded["normalize"] == "none"

    recorded = _run(
        real, tmp_path / "recorded", model=_recording(toy_threshold_bundle(), "reinhard"), normalize="model"
    )  # the default --normalize
    explicit = _run(real, tmp_path / "explicit", normalize="reinhard")
    assert recorded["normalize"] == "reinhard"
    assert recorded["class_areas_mm2"] == explicit["class_areas_mm2"]
    assert recorded["class_areas_mm2"] != unrecorded["class_areas_mm2"]  # the toy rule sees other colours


def test_model_normalisation_reads_the_record_and_refuses_an_unknown_one():
    from wsipipe.errors import ModelError
    from wsipipe.stain import StainParams, default_target

    target = default_target("macenko").to_dict()
    method, params = segment_module.model_normalisation(
        "model", None, {"stain_normalisation": {"method": "macenko", "target": target}}
    )
    assert method == "macenko" and params == StainParams.from_dict(target)
    assert segment_module.model_normalisation("model", None, {}) == ("none", None)
    assert segment_module.model_normalisation("vahadane", "t.png", {"stain_normalisation": {"method": "macenko"}}) == (
        "vahadane",
        "t.png",
    )
    with pytest.raises(ModelError, match="unknown stain normalisation 'sepia'"):
        segment_module.model_normalisation("model", None, {"stain_normalisation": {"method": "sepia"}})


def test_a_folder_another_run_writes_to_is_refused(slide, tiny_model_file, tmp_path, hold_folder_lock):
    outdir = tmp_path / "out"
    outdir.mkdir()
    hold_folder_lock(outdir)
    result = CliRunner().invoke(
        app, ["segment", str(slide), "-o", str(outdir), "--model", str(tiny_model_file), "--quiet"]
    )
    assert result.exit_code == 1 and f"{outdir}: another wsipipe run is writing to this folder" in result.output
    assert "Traceback" not in result.output and sorted(p.name for p in outdir.iterdir()) == [".wsipipe.lock"]


def test_a_failure_while_writing_outputs_leaves_none_of_them_and_the_rerun_skips_inference(
    slide, tmp_path, monkeypatch
):
    """The outputs appear together or not at all; a finished prediction is kept for the rerun."""
    import wsipipe.report as report_module

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "write_report_html", full_disk)
    with pytest.raises(OSError):
        _run(slide, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".wsipipe.lock", "prediction.zarr.partial"]
    monkeypatch.undo()
    seen = {"tiles": 0}
    original = segment_module.Runner.__call__

    def counting(self, tiles):
        seen["tiles"] += len(tiles)
        return original(self, tiles)

    monkeypatch.setattr(segment_module.Runner, "__call__", counting)
    report = _run(slide, tmp_path)
    assert seen["tiles"] == 0 and report["n_tiles_run"] == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        ".wsipipe.lock",
        "overlay.png",
        "prediction.zarr",
        "regions.geojson",
        "regions.xml",
        "report.html",
        "report.json",
    ]
    assert not list((tmp_path / "prediction.zarr").glob("stitch_journal*"))


def test_label_map_and_areas_count_only_tissue_inside_the_slide(tmp_path):
    """A model that calls everything tumour: the label map is tumour exactly on the tissue rule's
    pixels, 0 past the slide's edge, and tumour area = tissue area, both from that map."""
    width, height = 1000, 700  # at 1 µm/px and a 3 µm/px model: the grid's last column and row overhang
    rgb = np.full((height, width, 3), 240, np.uint8)
    rgb[100:600, 150:900] = (150, 60, 140)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(
        path, rgb, tile=(128, 128), resolution=(1e4, 1e4), resolutionunit="CENTIMETER", photometric="rgb", metadata=None
    )
    everything = toy_threshold_bundle(tile=64, mpp=3.0)
    with torch.no_grad():
        everything.model.weight[1] = 0.0
        everything.model.bias[1] = 100.0  # tumour everywhere
    report = _run(path, tmp_path / "out", model=everything)
    labels = zarr.open_array(str(tmp_path / "out" / "prediction.zarr" / "labels" / "classes" / "0"), mode="r")[:]
    assert labels.shape == (234, 334)  # ceil(700 / 3), ceil(1000 / 3)
    assert not labels[:, -1].any()  # centre at 1000.5 µm: past the slide
    assert labels[:, 50:300].any()
    pixel_mm2 = 9e-6
    assert report["tumour_area_mm2"] == pytest.approx(int((labels == 1).sum()) * pixel_mm2)
    assert report["tumour_area_mm2"] == pytest.approx(report["tissue_area_mm2"])
    assert report["tumour_fraction"] == pytest.approx(1.0)
    assert report["tissue_area_mm2"] == pytest.approx(0.5 * 0.75, rel=0.05)


def test_a_fifo_as_target_is_refused_before_the_output_folder(slide, tmp_path):
    fifo = tmp_path / "target.png"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInputError, match="named pipe"):
        _run(slide, tmp_path / "out", normalize="reinhard", target=fifo)
    assert not (tmp_path / "out").exists()


def test_bad_input_with_the_default_device_is_the_only_line(tmp_path):
    """The "no CUDA GPU" note of --device auto waits until the inputs are accepted."""
    missing = tmp_path / "missing.svs"
    result = runner.invoke(app, ["segment", str(missing), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output == f"Error: {missing}: no such file\n"
