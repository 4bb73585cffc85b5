"""``wsipipe annotations convert`` and ``mask``: outputs, exit codes and messages."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import shapely
import zarr
from PIL import Image
from typer.testing import CliRunner

from wsipipe.annotations import TileRasteriser, read_annotations
from wsipipe.cli.main import app

MONUSEG = "TCGA-21-5784-01Z-00-DX1"
runner = CliRunner()


def _run(*args):
    return runner.invoke(app, ["annotations", *map(str, args)])


def _asap_polygon_file(path, points, group="Tumor"):
    coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(points))
    path.write_text(
        f'<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon" PartOfGroup="{group}">'
        f"<Coordinates>{coords}</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )
    return path


def test_convert_asap_to_geojson_and_back(tmp_path, camelyon_xml):
    geojson = tmp_path / "tumour.geojson"
    result = _run("convert", camelyon_xml, geojson)
    assert result.exit_code == 0, result.output
    assert "3 annotations from asap written as geojson" in result.output
    back = tmp_path / "tumour.txt"
    result = _run("convert", geojson, back, "--to", "asap")
    assert result.exit_code == 0, result.output
    assert back.read_text().count("<Annotation ") == 3
    assert [a.label for a in read_annotations(back)] == ["Tumor"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tumour.geojson", "tumour.txt"]  # no temp files left


@pytest.mark.parametrize(
    "extra,message",
    [
        (["out.csv"], "cannot tell the output format"),
        (["out.xml", "--to", "aperio"], "--to 'aperio': choose one of geojson, asap"),
    ],
)
def test_convert_usage_errors_exit_2(tmp_path, extra, message, camelyon_xml):
    result = _run("convert", camelyon_xml, tmp_path / extra[0], *extra[1:])
    assert result.exit_code == 2 and message in result.output


def test_convert_refuses_to_overwrite_unless_asked(tmp_path, camelyon_xml):
    out = tmp_path / "out.geojson"
    out.write_text("keep me")
    result = _run("convert", camelyon_xml, out)
    assert result.exit_code == 2 and "--overwrite" in result.output and out.read_text() == "keep me"
    assert _run("convert", camelyon_xml, out, "--overwrite").exit_code == 0
    assert len(read_annotations(out)) == 3


def test_convert_warns_on_bad_annotations_and_strict_fails(tmp_path):
    source = _asap_polygon_file(tmp_path / "bad.xml", [(0, 0), (1, 1)])
    result = _run("convert", source, tmp_path / "out.geojson")
    assert result.exit_code == 0
    assert f"Warning: {source}:1: annotation 'a' (Polygon) has 2 distinct points" in result.stderr
    result = _run("convert", source, tmp_path / "strict.geojson", "--strict")
    assert result.exit_code == 2 and f"Error: {source}:1:" in result.stderr
    assert not (tmp_path / "strict.geojson").exists()


def test_convert_refuses_xxe_and_leaks_nothing(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top-secret-4242")
    source = tmp_path / "xxe.xml"
    source.write_text(
        f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]>'
        "<ASAP_Annotations><Annotations>&x;</Annotations></ASAP_Annotations>"
    )
    result = _run("convert", source, tmp_path / "out.geojson")
    assert result.exit_code == 2 and "DOCTYPE" in result.output
    assert "top-secret" not in result.output and not (tmp_path / "out.geojson").exists()


def test_mask_png_of_monuseg_uses_the_annotation_mpp(tmp_path, monuseg_dir):
    out = tmp_path / "mask.png"
    result = _run(
        "mask",
        monuseg_dir / f"{MONUSEG}.xml",
        "--slide",
        monuseg_dir / f"{MONUSEG}.tif",
        "--mpp",
        0.2527,
        "-o",
        out,
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert "records no µm/px; using the annotation file's MicronsPerPixel 0.2527" in result.stderr
    mask = np.asarray(Image.open(out))
    assert mask.shape == (1000, 1000) and mask.dtype == np.uint8
    annotations = read_annotations(monuseg_dir / f"{MONUSEG}.xml")
    annotations.clip_to(1000, 1000)
    assert np.array_equal(mask, TileRasteriser(annotations).region_mask(0, 0, 1000, 1000, 1000, 1000))


def test_mask_zarr_on_a_real_slide_with_clipping_and_label_map(tmp_path, cmu_small_svs):
    # CMU-1-Small-Region: 2220 x 2967 px at 0.499 µm/px -> at 8 µm/px a 138 x 185 mask.
    source = _asap_polygon_file(tmp_path / "edge.xml", [(-500, 100), (1500, 100), (1500, 1700), (-500, 1700)])
    out = tmp_path / "mask.zarr"
    result = _run("mask", source, "--slide", cmu_small_svs, "--mpp", 8, "-o", out, "--label-map", "Tumor=7", "-q")
    assert result.exit_code == 0, result.output
    assert "outside the slide" in result.stderr and "clipped" in result.stderr
    group = zarr.open_group(str(out), mode="r")
    mask = group["mask"][:]
    assert mask.shape == (185, 138) and group.attrs["label_map"] == {"Tumor": 7} and group.attrs["mpp"] == 8
    # Independent reference: mask pixel centres, in level-0 pixels, inside the clipped rectangle.
    sx, sy = 2220 / 138, 2967 / 185
    rows, cols = np.mgrid[0:185, 0:138]
    inside = shapely.contains_xy(shapely.box(0, 100, 1500, 1700), (cols + 0.5) * sx, (rows + 0.5) * sy)
    assert np.array_equal(mask == 7, inside) and set(np.unique(mask)) == {0, 7}


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["-o", "{tmp}/m.tif"], 2, "must be a .png or .zarr"),
        (["-o", "{tmp}/m.png", "--label-map", "Tumor=x"], 2, "not an integer"),
        (["-o", "{tmp}/m.png", "--mpp", "0.01"], 2, "finer than the slide's level 0"),
        (["-o", "{tmp}/m.png", "--slide", "{jp2k_svs}"], 2, "--mpp-override"),
        (["-o", "{tmp}/m.png", "--slide", "{broken_svs}"], 2, "broken.svs"),
    ],
    ids=["suffix", "label-map", "too-fine", "no-mpp", "broken-slide"],
)
def test_mask_errors(tmp_path, args, code, message, cmu_small_svs, broken_svs, camelyon_xml, jp2k_svs):
    args = [a.format(tmp=tmp_path, jp2k_svs=jp2k_svs, broken_svs=broken_svs) for a in args]
    base = {"--slide": str(cmu_small_svs), "--mpp": "8"}
    for flag in list(base):
        if flag in args:
            base.pop(flag)
    result = _run("mask", camelyon_xml, *[x for kv in base.items() for x in kv], *args, "-q")
    assert result.exit_code == code, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_cli_in_a_subprocess(tmp_path, camelyon_xml):
    out = tmp_path / "c.geojson"
    done = subprocess.run(
        [sys.executable, "-m", "wsipipe", "annotations", "convert", str(camelyon_xml), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and len(read_annotations(out)) == 3
    empty = tmp_path / "empty.xml"
    empty.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "wsipipe", "annotations", "convert", str(empty), str(tmp_path / "e.geojson")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.strip() == f"Error: {empty}: the file is empty"
