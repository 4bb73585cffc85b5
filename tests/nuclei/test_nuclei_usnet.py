"""The bundled US-Net nuclei model: its record, and that tiling a real image changes none of its nuclei."""

from __future__ import annotations

import numpy as np
import pytest

from wsipipe.metrics.instance import match
from wsipipe.models.io import load_model
from wsipipe.nuclei.classical import calibrate, haematoxylin_od
from wsipipe.nuclei.data import WORKING_MPP, load_cpm15, load_monuseg
from wsipipe.nuclei.stage import BUNDLED_NUCLEI_MODEL, input_stain, normalised_view, usnet_forward, usnet_segmenter
from wsipipe.nuclei.tiled import DEFAULT_MARGIN_UM, segment_image_tiled


@pytest.fixture(scope="module")
def bundle():
    return load_model(BUNDLED_NUCLEI_MODEL)


def test_bundled_model_records_how_it_was_made(bundle):
    assert BUNDLED_NUCLEI_MODEL.stat().st_size <= 20 * 2**20
    meta = bundle.metadata
    assert meta["architecture"] == "usnet" and meta["mpp"] == WORKING_MPP
    training = meta["training"]
    assert training["command"].startswith("wsipipe train ") and "--model usnet" in training["command"]
    assert f"--seed {training['seed']}" in training["command"]
    assert f"--normalised-view {meta['normalised_view']['method']}" in training["command"]
    assert training["data"]["images"] and training["config"]["seed"] == training["seed"]
    validation = meta["validation"]  # the 5-fold cross-validation the README quotes
    assert len(validation["fold_aji"]) == len(validation["fold_pq"]) == 5
    assert sorted(validation["per_image"]) == sorted(training["data"]["images"])
    for key in ("aji", "pq"):
        assert validation[key] == pytest.approx(np.mean(validation[f"fold_{key}"]))


def test_eight_views_make_the_segmentation_turn_with_the_image(bundle, cpm15_dir):
    rgb = load_cpm15(cpm15_dir)[0].rgb[:128, :128]  # square, a multiple of the network's
    turned = np.ascontiguousarray(np.rot90(rgb))
    single, eight = usnet_forward(bundle), usnet_forward(bundle, 8)
    seg, boxes, scores, _ = eight(rgb)
    np.testing.assert_allclose(np.rot90(seg), eight(turned)[0], atol=1e-5)  # the mean of the same 8 views
    assert np.abs(np.rot90(single(rgb)[0]) - single(turned)[0]).max() > 1e-3  # one view alone is not
    plain = single(rgb)
    assert np.abs(seg - plain[0]).max() > 1e-3
    np.testing.assert_array_equal(boxes, plain[1])  # detections from the image as it is
    np.testing.assert_array_equal(scores, plain[2])
    with pytest.raises(ValueError, match="views must be 1 or 8"):
        usnet_forward(bundle, 4)


def test_a_distance_model_turns_its_distance_with_the_image_too():
    from wsipipe.models import build_model
    from wsipipe.models.io import IMAGENET_NORMALISATION, ModelBundle

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    network = build_model(
        "usnet", 1, {"base": 4, "depth": 3, "anchor_sizes": [[16, 24], [8, 12], [4, 6]], "distance": True}
    )
    bundle = ModelBundle(network.eval(), {"input_normalisation": IMAGENET_NORMALISATION})
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)  # padded to 32 x 40 and cut back
    seg, _, _, distance = usnet_forward(bundle)(rgb)
    assert seg.shape == distance.shape == (30, 40) and np.abs(seg - distance).max() > 1e-3  # two different maps
    square = rgb[:24, :24]
    eight = usnet_forward(bundle, 8)
    np.testing.assert_allclose(np.rot90(eight(square)[3]), eight(np.ascontiguousarray(np.rot90(square)))[3], atol=1e-5)


def test_a_normalised_view_averages_the_input_as_it_is_and_mapped_onto_the_target(caplog, cpm15_dir):
    """Every output is the mean of the network's on the window as it is and on the window mapped
    with the parameters given (a slide's), else with the window's own; a model without the record
    sees the window once, as it is."""
    from wsipipe.errors import ModelError
    from wsipipe.models import build_model
    from wsipipe.models.io import IMAGENET_NORMALISATION, ModelBundle
    from wsipipe.stain import ReinhardNormalizer

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    network = build_model(
        "usnet", 1, {"base": 4, "depth": 3, "anchor_sizes": [[16, 24], [8, 12], [4, 6]], "distance": True}
    ).eval()
    first, second = (s.rgb[:64, :96] for s in load_cpm15(cpm15_dir)[:2])
    target = ReinhardNormalizer().estimate(first)
    plain = ModelBundle(network, {"input_normalisation": IMAGENET_NORMALISATION})
    viewing = ModelBundle(
        network,
        {
            "input_normalisation": IMAGENET_NORMALISATION,
            "normalised_view": {"method": "reinhard", "target": target.to_dict()},
        },
    )
    normaliser = ReinhardNormalizer().fit(target)

    slide = input_stain(viewing.metadata, second[:32])  # another part of the "slide"
    assert slide.to_dict() == ReinhardNormalizer().estimate(second[:32]).to_dict()
    for stain, mapped in ((slide, normaliser.transform(second, source=slide)), (None, normaliser.transform(second))):
        assert np.abs(mapped.astype(int) - second).max() > 10  # the two views differ
        got = usnet_forward(viewing, 1, stain)(second)
        for name, value, as_is, view in zip(
            ["seg", "boxes", "scores", "distance"], got, usnet_forward(plain)(second), usnet_forward(plain)(mapped)
        ):
            np.testing.assert_allclose(value, (as_is + view) / 2, rtol=1e-6, atol=1e-6, err_msg=name)
    assert input_stain(plain.metadata, second) is None and normalised_view(plain.metadata) is None
    blank = np.full((1, 64, 64, 3), 250, np.uint8)  # no tissue: each window is then estimated on its own
    assert input_stain(viewing.metadata, blank) is None and "stain estimated per window" in caplog.text
    with pytest.raises(ModelError, match="unusable normalised view"):
        normalised_view({"normalised_view": {"method": "sepia", "target": {}}})


def _tiled_matches_whole(sample, segment, core):
    whole = segment(sample.rgb)
    calibration = calibrate(sample.rgb)
    tiled, nuclei = segment_image_tiled(
        sample.rgb,
        segment,
        lambda rgb: haematoxylin_od(rgb, calibration.stain_matrix),
        core=core,
        margin=round(DEFAULT_MARGIN_UM / sample.mpp),
    )
    assert [n.id for n in nuclei] == list(range(1, tiled.max() + 1))  # unique ids, no gaps
    n_whole, n_tiled = int(whole.max()), int(tiled.max())
    assert n_whole > 50 and abs(n_tiled - n_whole) <= 0.01 * n_whole, (n_whole, n_tiled)
    assert match(whole, tiled, threshold=0.9).tp >= 0.99 * n_whole


def test_tiles_give_the_same_nuclei_as_the_whole_image(bundle, cpm15_dir, monuseg_dir):
    # small cores (128 µm) so that many nuclei straddle core borders; every tile normalised with the
    # image's stain parameters, as `wsipipe nuclei` does with a slide's
    for sample in (load_cpm15(cpm15_dir)[0], load_monuseg(monuseg_dir, limit=1)[0]):
        _tiled_matches_whole(sample, usnet_segmenter(bundle, input_stain(bundle.metadata, sample.rgb)), core=256)


def test_nuclei_command_runs_the_bundled_model_by_name(tmp_path, cpm15_dir):
    import json

    from typer.testing import CliRunner

    from wsipipe.cli.main import app

    image = cpm15_dir / "image02.png"  # a 20x image: 0.5 µm/px
    result = CliRunner().invoke(
        app, ["nuclei", str(image), "-o", str(tmp_path), "--model", "bundled", "--mpp-override", "0.5", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "nuclei.json").read_text())
    assert summary["method"] == f"usnet:{BUNDLED_NUCLEI_MODEL.name}" and summary["nuclei_count"] > 50
    assert summary["input_stain"]["method"] == "reinhard"  # the image's own, for the model's normalised view
