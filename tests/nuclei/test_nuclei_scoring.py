"""``wsipipe evaluate --task instances|cellularity``: hand-made cases (arithmetic in the comments) and
real CPM-15 and MoNuSeg images segmented by ``wsipipe nuclei``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from wsipipe.annotations import read_annotations
from wsipipe.cli.main import app
from wsipipe.metrics.instance import aji, panoptic_quality
from wsipipe.nuclei.data import load_cpm15, load_monuseg
from wsipipe.nuclei.outputs import HAEMATOXYLIN, read_labels

runner = CliRunner()

# true objects: 1 (4 px), 2 (4 px), 3 (1 px)
TRUE = np.array([[1, 1, 0, 0, 2, 2], [1, 1, 0, 0, 2, 2], [0, 0, 0, 0, 0, 0], [3, 0, 0, 0, 0, 0]], np.uint16)
# predicted: 1 (5 px, covers true 1), 2 (1 px inside true 2), 4 (1 px, touches nothing)
PRED = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 2, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 4]], np.uint16)


def _evaluate(*args):
    result = runner.invoke(app, ["evaluate", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def test_instances_by_hand(tmp_path):
    Image.fromarray(TRUE).save(tmp_path / "true.png")
    Image.fromarray(PRED).save(tmp_path / "pred.png")
    result = _evaluate(
        "--task", "instances", tmp_path / "pred.png", tmp_path / "true.png", "--json", tmp_path / "r.json"
    )
    figures = json.loads((tmp_path / "r.json").read_text())
    mean = figures["mean"]
    # Dice: |T| 9, |P| 7, |T ∩ P| 5 -> 10/16.  AJI: T1->P1 I 4 U 5; T2->P2 I 1 U 4; T3 U 1; P4 unused U 1 -> 5/11
    assert mean["dice"] == pytest.approx(10 / 16) and mean["aji"] == pytest.approx(5 / 11)
    # only (T1, P1) matches (IoU 0.8): TP 1, FP 2, FN 2 -> DQ 1/3, SQ 0.8, P = R = F1 = 1/3
    assert (mean["dq"], mean["sq"], mean["pq"]) == pytest.approx((1 / 3, 0.8, 0.8 / 3))
    assert (mean["precision"], mean["recall"], mean["f1"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    # unranked predictions: one point of the curve, recall 1/3 at precision 1/3 -> AP 1/9
    assert figures["ap"] == pytest.approx(1 / 9)
    assert "0.455" in result.output and "VOC AP at IoU > 0.5: 0.1111" in result.output


def test_instance_folders_pair_by_name_and_average(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    Image.fromarray(PRED).save(tmp_path / "pred" / "a.png")
    Image.fromarray(TRUE).save(tmp_path / "pred" / "b.png")  # a perfect prediction
    Image.fromarray(TRUE).save(tmp_path / "truth" / "a_inst.png")
    Image.fromarray(TRUE).save(tmp_path / "truth" / "b_inst.png")
    _evaluate("--task", "instances", tmp_path / "pred", tmp_path / "truth", "--json", tmp_path / "r.json", "-q")
    figures = json.loads((tmp_path / "r.json").read_text())
    assert sorted(figures["per_image"]) == ["a", "b"] and figures["per_image"]["b"]["aji"] == 1.0
    assert figures["mean"]["aji"] == pytest.approx((5 / 11 + 1) / 2)
    # pooled, all tied: TP 1 + 3 of 6 true, of 3 + 3 predictions -> recall 4/6 at precision 4/6
    assert figures["ap"] == pytest.approx(4 / 9)
    (tmp_path / "pred" / "b.png").unlink()
    missing = runner.invoke(app, ["evaluate", "--task", "instances", str(tmp_path / "pred"), str(tmp_path / "truth")])
    assert missing.exit_code == 2 and "no prediction for b_inst.png" in missing.output


def test_cellularity_pk_by_hand(tmp_path):
    # reference 1, 2, 2, 3 against 0.1, 0.3, 0.2, 0.2: C 3, D 1, Tx 1 -> PK = 3.5 / 5 = 0.7
    (tmp_path / "truth.csv").write_text("slide,rid,y\n1,1,1\n1,2,2\n2,1,2\n2,2,3\n")
    (tmp_path / "pred.csv").write_text(
        "slide,rid,p\n2,2,0.2\n1,1,0.1\n1,2,0.3\n2,1,0.2\n9,9,0.5\n"
    )  # any order, extras ignored
    result = _evaluate(
        "--task", "cellularity", tmp_path / "pred.csv", tmp_path / "truth.csv", "--json", tmp_path / "r.json"
    )
    assert "PK 0.7000 over 4 cases" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["key_columns"] == ["slide", "rid"]
    # a training CSV's trailing group column is neither the value nor (unshared) a key
    (tmp_path / "grouped.csv").write_text("slide,rid,y,group\n1,1,1,a\n1,2,2,a\n2,1,2,b\n2,2,3,b\n")
    grouped = _evaluate("--task", "cellularity", tmp_path / "pred.csv", tmp_path / "grouped.csv")
    assert "PK 0.7000 over 4 cases" in grouped.output
    # a batch summary.csv: the cellularity column, matched by key; a slide without a value is an error
    (tmp_path / "summary.csv").write_text("name,key,state,cellularity,error\na,s1,done,0.5,\nb,s2,done,,\n")
    (tmp_path / "t.csv").write_text("key,cellularity\ns1,0.4\ns2,0.1\n")
    blank = runner.invoke(
        app, ["evaluate", "--task", "cellularity", str(tmp_path / "summary.csv"), str(tmp_path / "t.csv")]
    )
    assert blank.exit_code == 2 and "cellularity of s2 is ''" in blank.output


def test_usage_errors(tmp_path):
    cases = [
        (["--task", "shapes", "a", "b"], "--task 'shapes'"),
        (["--task", "instances", "a"], "takes PRED TRUTH"),
        (["--task", "cellularity", "a", "b", "--data", "d"], "--data DIR"),
        (["--task", "instances", str(tmp_path), str(tmp_path / "t.png")], "not a nuclei output folder"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["evaluate", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)


@pytest.fixture(scope="module")
def cpm15_run(tmp_path_factory, cpm15_dir):
    out = tmp_path_factory.mktemp("cpm") / "image14"
    image = cpm15_dir / "image14.png"
    result = runner.invoke(app, ["nuclei", str(image), "-o", str(out), "--mpp-override", "0.25", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_real_cpm15_image_scores_as_the_cross_validation_does(cpm15_run, tmp_path, cpm15_dir):
    truth = cpm15_dir / "image14_inst.png"
    _evaluate(
        "--task", "instances", cpm15_run, truth, "--json", tmp_path / "r.json", "-q", "--score-column", HAEMATOXYLIN
    )
    figures = json.loads((tmp_path / "r.json").read_text())
    # the same figures as the benchmark's: truth resampled to 0.5 µm/px with the images
    sample = next(s for s in load_cpm15(cpm15_dir) if s.name == "cpm15/image14")
    labels = read_labels(cpm15_run / "labels.zarr")[0][:]
    row = figures["per_image"]["image14_inst"]
    assert row["aji"] == pytest.approx(aji(sample.instances, labels))
    assert row["pq"] == pytest.approx(panoptic_quality(sample.instances, labels).pq)
    assert 0.3 < row["aji"] < 0.9 and 0 < figures["ap"] < 1 and figures["ap_scores"] == HAEMATOXYLIN


def test_real_monuseg_outlines(tmp_path, monuseg_dir):
    root = monuseg_dir
    xml = sorted(root.glob("*.xml"))[0]
    out = tmp_path / xml.stem
    mpp = read_annotations(xml).mpp  # MicronsPerPixel of the outlines, 0.2527
    result = runner.invoke(
        app, ["nuclei", str(xml.with_suffix(".tif")), "-o", str(out), "--mpp-override", str(mpp), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    _evaluate("--task", "instances", out, xml, "--json", tmp_path / "r.json", "-q")
    row = json.loads((tmp_path / "r.json").read_text())["per_image"][xml.stem]
    sample = load_monuseg(root, limit=1)[0]  # outlines rasterised at level 0, resampled to 0.5 µm/px
    labels = read_labels(out / "labels.zarr")[0][:]
    assert row["aji"] == pytest.approx(aji(sample.instances, labels))
    assert row["tp"] + row["fn"] == len(np.unique(sample.instances)) - 1 > 100
