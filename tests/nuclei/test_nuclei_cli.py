"""``wsipipe nuclei`` end to end on a real CPM-15 image: outputs agree with each other and the stage."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import shapely
from PIL import Image
from typer.testing import CliRunner

from wsipipe.classes import NON_TUMOUR_NUCLEUS, QUPATH_CLASSES
from wsipipe.cli.main import app
from wsipipe.nuclei import outputs
from wsipipe.nuclei.classical import Calibration, ClassicalParams, segment_nuclei
from wsipipe.nuclei.data import read_rgb, resample
from wsipipe.nuclei.outputs import AREA, read_labels


@pytest.fixture(scope="module")
def run(tmp_path_factory, cpm15_dir):
    """image14 (40x, 0.25 µm/px) with the left half of it marked as tumour."""
    tmp = tmp_path_factory.mktemp("nuclei")
    image = cpm15_dir / "image14.png"
    raw = read_rgb(image)
    mask = np.zeros(raw.shape[:2], np.uint8)
    mask[:, : raw.shape[1] // 2] = 255
    Image.fromarray(mask).resize((raw.shape[1] // 4, raw.shape[0] // 4), Image.NEAREST).save(tmp / "tumour.png")
    out = tmp / "out"
    result = CliRunner().invoke(
        app,
        [
            "nuclei",
            str(image),
            "-o",
            str(out),
            "--mpp-override",
            "0.25",
            "--tumour-mask",
            str(tmp / "tumour.png"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    return raw, out, result.output


def _rows(out):
    with open(out / "nuclei.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _labels(out) -> np.ndarray:
    return read_labels(out / "labels.zarr")[0][:]


def _check_outputs_agree(out, printed=None) -> dict:
    """What every run must hold: one count in every file, ids 1..n, no nucleus under the recorded
    minimum, outlines QuPath accepts whose areas match the pixel counts, tiles that sum to the slide."""
    summary = json.loads((out / "nuclei.json").read_text())
    rows = _rows(out)
    features = json.loads((out / "nuclei.geojson").read_text())["features"]
    labels = _labels(out)
    attributes = read_labels(out / "labels.zarr")[1]
    n = summary["nuclei_count"]
    assert len(rows) == len(features) == labels.max() == n
    assert np.array_equal(np.unique(labels[labels > 0]), np.arange(1, n + 1))
    assert sorted(int(r["id"]) for r in rows) == list(range(1, n + 1))
    areas = np.array([float(r[AREA]) for r in rows])
    level0_um2 = (attributes["mpp"] / attributes["level0_px_per_px"]) ** 2
    assert attributes["min_area_um2"] > 0 and areas.min() >= attributes["min_area_um2"]
    assert np.bincount(labels.ravel())[1:].min() * attributes["mpp"] ** 2 >= attributes["min_area_um2"]
    for row, feature in zip(rows, features):
        ring = feature["geometry"]["coordinates"][0]
        assert len(ring) >= 4 and ring[0] == ring[-1]
        polygon = shapely.geometry.shape(feature["geometry"])
        assert polygon.is_valid, (row["id"], shapely.is_valid_reason(polygon))
        assert polygon.area * level0_um2 == pytest.approx(float(row[AREA]), rel=0.15)
        assert feature["properties"]["measurements"]["Nucleus: ID"] == int(row["id"])
    tiles = summary["tiles"]
    for key in ("nuclei_count", "tumour_nuclei_count", "tissue_mm2", "tumour_mm2"):
        assert sum(t[key] for t in tiles) == pytest.approx(summary[key], abs=1e-5)
    if summary["cellularity"] is not None:
        tile_nuclear = sum(t["cellularity"] * t["tumour_mm2"] for t in tiles if t["cellularity"] is not None)
        assert tile_nuclear == pytest.approx(summary["cellularity"] * summary["tumour_mm2"], rel=1e-4)
        assert 0 <= summary["cellularity"] <= 1 and all(
            0 <= t["cellularity"] <= 1 for t in tiles if t["cellularity"] is not None
        )
    if printed is not None:
        assert f"{n} nuclei" in printed
    return summary


def test_outputs_agree(run):
    raw, out, printed = run
    summary = _check_outputs_agree(out, printed)
    rows = _rows(out)
    features = json.loads((out / "nuclei.geojson").read_text())["features"]
    labels = _labels(out)
    n = summary["nuclei_count"]
    assert n > 50
    assert all(f["properties"]["objectType"] == "detection" for f in features)
    # QuPath's measurement names and classes, the same names in the CSV
    assert list(features[0]["properties"]["measurements"]) == [
        "Nucleus: ID",
        "Nucleus: Area µm^2",
        "Nucleus: Perimeter µm",
        "Nucleus: Eccentricity",
        "Nucleus: Hematoxylin OD mean",
    ]
    assert set(outputs.CSV_COLUMNS[3:7]) == set(features[0]["properties"]["measurements"]) - {"Nucleus: ID"}
    classes = {r["in_tumour"]: f["properties"]["classification"] for r, f in zip(rows, features)}
    assert classes == {
        "1": {"name": "Tumor", "color": list(QUPATH_CLASSES["Tumor"])},
        "0": {"name": NON_TUMOUR_NUCLEUS, "color": list(QUPATH_CLASSES[NON_TUMOUR_NUCLEUS])},
    }
    # level-0 centroids: working pixels (0.5 µm) are 2 level-0 pixels (0.25 µm) wide
    for row in rows[:: max(1, n // 20)]:
        ys, xs = np.nonzero(labels == int(row["id"]))
        assert float(row["centroid_x"]) == pytest.approx((xs.mean() + 0.5) * 2, abs=0.01)
        assert float(row["centroid_y"]) == pytest.approx((ys.mean() + 0.5) * 2, abs=0.01)
        assert float(row[AREA]) == pytest.approx(ys.size * 0.25, abs=1e-3)


def _check_ome_zarr(out) -> list[np.ndarray]:
    """ome-zarr-py's reader finds one multiscale label image, its levels every other pixel of the one
    before, in µm, pixel centres placed against the input's level-0 pixel centres; returns the levels."""
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    labels = _labels(out)
    attributes = read_labels(out / "labels.zarr")[1]
    (node,) = Reader(parse_url(str(out / "labels.zarr"), fmt=FormatV04()))()
    assert {Label, Multiscales} <= {type(spec) for spec in node.specs}
    assert [axis["unit"] for axis in node.metadata["axes"]] == ["micrometer", "micrometer"]
    levels = [np.asarray(level) for level in node.data]
    assert levels[0].dtype == np.int32 and np.array_equal(levels[0], labels)
    level0_mpp = attributes["mpp"] / attributes["level0_px_per_px"]
    datasets = json.loads((out / "labels.zarr" / ".zattrs").read_text())["multiscales"][0]["datasets"]
    assert len(datasets) == len(levels)
    for k, (level, dataset) in enumerate(zip(levels, datasets)):
        assert np.array_equal(level, labels[:: 2**k, :: 2**k])
        scale, translation = dataset["coordinateTransformations"]
        assert scale["scale"] == pytest.approx([attributes["mpp"] * 2**k] * 2)
        assert translation["translation"] == pytest.approx([(attributes["mpp"] * 2**k - level0_mpp) / 2] * 2)
    return levels


def test_labels_are_an_ome_zarr_label_image(run):
    raw, out, _ = run
    (level,) = _check_ome_zarr(out)  # 249 x 230: one level
    assert level.shape == (249, 230)
    attributes = read_labels(out / "labels.zarr")[1]
    assert attributes["level0_shape"] == list(raw.shape[:2]) and attributes["method"] == "classical"
    assert attributes["params"]["min_area_um2"] == attributes["min_area_um2"] == 8.0


def test_a_fluorescence_slide_all_tumour(tmp_path, dapi_ndpi):
    """Issue 25's slide with a whole-slide tumour mask: cellularity was 1.095 (one tile 1.89), nuclei
    of 0.5 µm² were written under the 8 µm² minimum, and two outlines had rings of 2 and 3 positions."""
    mask = tmp_path / "tumour.png"
    Image.fromarray(np.full((62, 76), 255, np.uint8)).save(mask)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "nuclei",
            str(dapi_ndpi),
            "-o",
            str(out),
            "--tumour-mask",
            str(mask),
            "--qc",
            "off",
            "--quiet",
        ],  # quality control would refuse the slide: not brightfield
    )
    assert result.exit_code == 0, result.output
    summary = _check_outputs_agree(out, result.output)
    assert summary["tumour_nuclei_count"] == summary["nuclei_count"] > 1000
    assert summary["tumour_mm2"] == summary["tissue_mm2"] and 0 < summary["cellularity"] <= 1
    assert [level.shape for level in _check_ome_zarr(out)] == [
        (2219, 1810),
        (1110, 905),
        (555, 453),
        (278, 227),
        (139, 114),
    ]


def test_tumour_flags_and_cellularity(run):
    raw, out, _ = run
    summary = json.loads((out / "nuclei.json").read_text())
    rows = _rows(out)
    half = raw.shape[1] // 2  # level-0 column where the tumour mask ends
    for row in rows:
        x = float(row["centroid_x"])
        if abs(x - half) > 4:  # away from the mask edge (its nearest-neighbour sampling)
            assert row["in_tumour"] == str(int(x < half)), row
    flagged = [r for r in rows if r["in_tumour"] == "1"]
    assert summary["tumour_nuclei_count"] == len(flagged) > 10
    # recomputed from the files: nuclear pixels of labels.zarr in the tumour mask (resized onto the
    # labels' grid, nearest) over the mask's pixels there; the image is all tissue
    labels = _labels(out)
    with Image.open(out.parent / "tumour.png") as mask:
        tumour = np.asarray(mask.resize(labels.shape[::-1], Image.NEAREST)) > 0
    assert summary["tissue_mm2"] == pytest.approx(labels.size * 0.25e-6, rel=1e-4)
    assert summary["tumour_mm2"] == pytest.approx(tumour.sum() * 0.25e-6, rel=0.01)
    assert summary["cellularity"] == pytest.approx(np.count_nonzero(labels[tumour]) / tumour.sum(), rel=0.01)
    assert 0 < summary["cellularity"] < 1
    assert summary["nuclei_per_mm2_tumour"] == pytest.approx(
        len(flagged) / summary["tumour_mm2"], rel=1e-3
    )  # areas rounded to 1e-6 mm²
    assert summary["tumour_mm2"] < summary["tissue_mm2"]
    assert sum(t["nuclei_count"] for t in summary["tiles"]) == summary["nuclei_count"]


def test_same_nuclei_as_the_whole_image(run):
    raw, out, _ = run
    summary = json.loads((out / "nuclei.json").read_text())
    calibration = Calibration(np.asarray(summary["calibration"]["stain_matrix"]), summary["calibration"]["threshold"])
    rgb, _ = resample(raw, None, 0.25, 0.5)
    whole = segment_nuclei(rgb, 0.5, calibration, ClassicalParams())
    labels = _labels(out)
    assert np.array_equal(labels > 0, whole > 0)
    assert labels.max() == whole.max()


def test_a_run_that_fails_midway_leaves_the_previous_outputs(run, tmp_path, monkeypatch, cpm15_dir):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(run[1], out)
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    staged = []

    def disk_full(path, *args):
        staged.extend(sorted(p.name for p in path.parent.iterdir()))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs, "write_geojson", disk_full)
    image = cpm15_dir / "image14.png"  # no tumour mask this time: other figures
    result = CliRunner().invoke(app, ["nuclei", str(image), "-o", str(out), "--mpp-override", "0.25", "--quiet"])
    assert result.exit_code == 1 and "no space left on device while writing" in result.output
    assert staged == ["labels.zarr", "nuclei.csv"]  # written, then abandoned
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_image_without_mpp_warns(tmp_path, cpm15_dir):
    image = cpm15_dir / "image15.png"
    result = CliRunner().invoke(app, ["nuclei", str(image), "-o", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "--mpp-override" in result.output
    assert (tmp_path / "o" / "nuclei.csv").exists()
    assert not list((tmp_path / "o").glob(".*partial"))


def test_usage_errors(tmp_path, cpm15_dir):
    image = cpm15_dir / "image15.png"
    runner = CliRunner()
    missing = runner.invoke(app, ["nuclei", str(tmp_path / "none.png"), "-o", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    both = runner.invoke(app, ["nuclei", str(image), "-o", str(tmp_path / "o"), "--model", "m", "--classical"])
    assert both.exit_code == 2 and "choose one" in both.output
    model = runner.invoke(app, ["nuclei", str(image), "-o", str(tmp_path / "o"), "--model", str(image)])
    assert model.exit_code == 2 and "not a safetensors model" in model.output
    mask = runner.invoke(app, ["nuclei", str(image), "-o", str(tmp_path / "o"), "--tumour-mask", str(image) + "x"])
    assert mask.exit_code == 2 and "--tumour-mask" in mask.output
    assert not (tmp_path / "o").exists()


def test_help_through_python_m():
    result = subprocess.run(
        [sys.executable, "-m", "wsipipe", "nuclei", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--mpp-override" in result.stdout and "cellularity" in result.stdout


def test_usnet_model_file_runs_end_to_end(tmp_path, cpm15_dir):
    """An untrained tiny US-Net saved as a model file: the plumbing, not the accuracy."""
    import torch

    from wsipipe.models import build_model
    from wsipipe.models.io import model_metadata, save_model

    args = {"base": 4, "depth": 3, "anchor_sizes": [[24, 34], [12, 17], [6, 8.5]]}
    torch.manual_seed(0)
    network = build_model("usnet", 1, args)
    with torch.no_grad():
        network.segmentation.bias.fill_(3.0)  # call most pixels nucleus so there is something to count
    metadata = model_metadata("usnet", args, ["nucleus"], 0.5, 256)
    metadata["instances"] = {"min_pixels": 40}  # the model's minimum: 40 px of 0.25 µm² each
    path = save_model(tmp_path / "nuclei.safetensors", network, metadata)
    image = cpm15_dir / "image14.png"
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "nuclei",
            str(image),
            "-o",
            str(out),
            "--model",
            str(path),
            "--mpp-override",
            "0.25",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "nuclei.json").read_text())
    labels = _labels(out)
    assert summary["method"] == "usnet:nuclei.safetensors"
    assert summary["nuclei_count"] == labels.max() == len(_rows(out)) > 0
    assert read_labels(out / "labels.zarr")[1]["min_area_um2"] == 10.0
    _check_outputs_agree(out)
    wrong = save_model(
        tmp_path / "seg.safetensors",
        build_model("plain-unet", 2, {"base": 4}),
        model_metadata("plain-unet", {"base": 4}, ["a", "b"], 0.5, 256),
    )
    refused = CliRunner().invoke(app, ["nuclei", str(image), "-o", str(out), "--model", str(wrong), "--device", "cpu"])
    assert refused.exit_code == 2 and "not a nuclei (usnet) model" in refused.output


def test_a_folder_another_run_writes_to_is_refused(tmp_path, hold_folder_lock, cpm15_dir):
    image = cpm15_dir / "image01.png"
    outdir = tmp_path / "out"
    outdir.mkdir()
    hold_folder_lock(outdir)
    result = CliRunner().invoke(app, ["nuclei", str(image), "-o", str(outdir), "--mpp-override", "0.5", "--quiet"])
    assert result.exit_code == 1 and f"{outdir}: another wsipipe run is writing to this folder" in result.output
    assert "Traceback" not in result.output and sorted(p.name for p in outdir.iterdir()) == [".wsipipe.lock"]


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, cpm15_dir):
    image = cpm15_dir / "image01.png"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = CliRunner().invoke(app, ["nuclei", str(image), "-o", str(blocker / "out"), "--mpp-override", "0.5"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().endswith(f"{blocker / 'out'}: cannot create the output folder (Not a directory)")
