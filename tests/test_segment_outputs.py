"""segment --nuclei's outputs agree with each other, read back by independent readers (shapely,
ome-zarr-py, the CSV module), on the real slide where they used to contradict each other."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from wsipipe.classes import QUPATH_CLASSES


@pytest.fixture(scope="module")
def run(dapi_ndpi, tmp_path_factory):
    """``segment --nuclei`` with the bundled models on the fluorescence NDPI (3968 x 4864 px: the
    12 µm/px grid's last column and row overhang the slide), as a user runs it; quality control
    would refuse the slide (not brightfield), so it is off to reach the outputs."""
    out = tmp_path_factory.mktemp("segment") / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsipipe",
            "segment",
            str(dapi_ndpi),
            "-o",
            str(out),
            "--nuclei",
            "--qc",
            "off",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return out, json.loads((out / "report.json").read_text())


def _polygons(path):
    features = json.loads(path.read_text())["features"]
    return features, [shape(f["geometry"]) for f in features]


def test_figures_are_bounded_by_construction(run):
    _, report = run
    assert 0 < report["tumour_area_mm2"] <= report["tissue_area_mm2"]
    assert 0 <= report["tumour_fraction"] <= 1
    assert 0 <= report["cellularity"] <= 1
    assert report["tumour_nuclei_count"] <= report["nuclei_count"]


def test_areas_equal_what_the_written_label_map_says(run):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    out, report = run
    nodes = list(Reader(parse_url(str(out / "prediction.zarr")))())
    (labels,) = [n for n in nodes if n.zarr.path.rstrip("/").endswith("labels/classes")]
    level0 = np.asarray(labels.data[0])
    model_mpp, slide_mpp = report["model"]["mpp"], report["mpp"]
    tumour_px = int(np.isin(level0, [i for i, c in enumerate(report["model"]["classes"]) if c == "tumour"]).sum())
    assert report["tumour_area_mm2"] == pytest.approx(tumour_px * model_mpp**2 / 1e6, rel=0.01)
    # the grid overhangs the slide: its last column's centre lies past the edge, so it is empty
    width0 = 3968
    assert (level0.shape[1] - 0.5) * model_mpp / slide_mpp > width0 and not level0[:, -1].any()
    # the nuclei stage measured the same tissue and tumour
    assert report["nuclei_tissue_mm2"] == pytest.approx(report["tissue_area_mm2"], rel=0.01)
    assert report["nuclei_tumour_mm2"] == pytest.approx(report["tumour_area_mm2"], rel=0.01)
    # level 0 is placed by pixel centres: a 12 µm pixel's centre is (12 - slide µm/px) / 2 from the slide's first
    transforms = labels.metadata["coordinateTransformations"][0]
    assert transforms[1]["translation"] == pytest.approx([(model_mpp - slide_mpp) / 2] * 2)


def test_regions_are_valid_inside_the_slide_and_match_the_report(run):
    out, report = run
    features, polygons = _polygons(out / "regions.geojson")
    assert len(features) == sum(report["n_regions"].values()) > 0
    for polygon in polygons:
        assert polygon.is_valid and polygon.geom_type == "Polygon"
        assert all(len(ring.coords) >= 4 for ring in [polygon.exterior, *polygon.interiors])
    x0, y0, x1, y1 = shapely.unary_union(polygons).bounds
    assert x0 >= 0 and y0 >= 0 and x1 <= 3968 and y1 <= 4864
    area_mm2 = sum(p.area for p in polygons) * report["mpp"] ** 2 / 1e6
    assert area_mm2 == pytest.approx(sum(report["regions_area_mm2"].values()), rel=0.01)


def test_nuclei_files_agree_with_the_report(run):
    out, report = run
    features, _ = _polygons(out / "nuclei.geojson")
    with open(out / "nuclei.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(features) == len(rows) == report["nuclei_count"]
    tumour = sum(f["properties"]["classification"]["name"] == "Tumor" for f in features)
    assert tumour == report["tumour_nuclei_count"]


def test_one_class_vocabulary_and_palette_in_every_output(run):
    out, _ = run
    colours = {}
    for name in ("regions.geojson", "nuclei.geojson"):
        for feature in json.loads((out / name).read_text())["features"]:
            classification = feature["properties"]["classification"]
            colours.setdefault(classification["name"], set()).add(tuple(classification["color"]))
    assert set(colours) <= set(QUPATH_CLASSES)
    assert all(found == {QUPATH_CLASSES[name]} for name, found in colours.items())
    attrs = json.loads((out / "prediction.zarr" / "labels" / "classes" / ".zattrs").read_text())["image-label"]
    named = {p["label-value"]: p["class"] for p in attrs["properties"]}
    for colour in attrs["colors"]:
        if colour["label-value"]:
            assert tuple(colour["rgba"][:3]) == QUPATH_CLASSES[named[colour["label-value"]]]


def test_a_finished_output_folder_holds_no_journal_or_partial(run):
    out, _ = run
    assert not list(out.rglob("*journal*")) and not list(out.glob("*.partial")) and not list(out.glob(".*.tmp"))
    page = (out / "report.html").read_text()
    assert f"wsipipe view {out}</code>" in page and ".tmp" not in page  # the folder itself, not the staging one
