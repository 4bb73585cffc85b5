"""``stages.segment``: the config's checks name their parameters; a run on the bundled slide writes
report.json and nuclei.json as the results' ``to_json()``, byte for byte."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from wsipipe import stages
from wsipipe.errors import InvalidInputError, ModelError
from wsipipe.segment import BUNDLED_MODEL

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "data" / "CMU-1-Small-Region.svs"
PATHS = {"slide": "a.svs", "output": "out"}


@pytest.mark.parametrize(
    ("bad", "parameter", "message"),
    [
        (
            {"normalize": "sepia"},
            "normalize",
            "normalize 'sepia': choose one of model, vahadane, macenko, reinhard, none",
        ),
        ({"batch_size": 0}, "batch_size", "batch_size must be at least 1, got 0"),
        ({"readers": -1}, "readers", "readers must be at least 0, got -1"),
        ({"mpp_override": 0.0}, "mpp_override", "mpp_override must be a positive number, got 0.0"),
        ({"qc": "nowhere"}, "qc", "qc nowhere: not 'auto', 'off' or an existing qc output folder or qc.zarr"),
    ],
)
def test_segment_config_checks_name_their_parameter(bad, parameter, message):
    with pytest.raises(InvalidInputError) as caught:
        stages.SegmentConfig(**PATHS, **bad)
    assert caught.value.parameter == parameter and str(caught.value) == message


def test_segment_config_refuses_a_fifo_target_and_a_tumour_model_as_nuclei_model(tmp_path):
    fifo = tmp_path / "target.png"
    os.mkfifo(fifo)
    with pytest.raises(
        InvalidInputError, match="is a named pipe \\(FIFO\\), not a regular file"
    ):  # would block cv2.imread for ever
        stages.SegmentConfig(**PATHS, target=fifo)
    with pytest.raises(ModelError, match="not a nuclei \\(usnet\\) model"):
        stages.SegmentConfig(**PATHS, nuclei_model=BUNDLED_MODEL)
    config = stages.SegmentConfig(**PATHS, nuclei_model="bundled")
    assert config.nuclei and config.nuclei_model.name == "nuclei-usnet.safetensors"  # implies nuclei, resolved


def test_nuclei_config_checks_name_their_parameters():
    with pytest.raises(InvalidInputError) as caught:
        stages.NucleiConfig(input="a.svs", output="out", model="bundled", classical=True)
    assert caught.value.parameters == ("model", "classical")
    assert str(caught.value) == "model and classical: choose one"
    assert caught.value.text({"model": "--model", "classical": "--classical"}) == "--model and --classical: choose one"
    with pytest.raises(InvalidInputError, match="^qc nowhere"):
        stages.NucleiConfig(input="a.svs", output="out", qc="nowhere")


def test_segment_batch_options_are_the_per_slide_fields(tmp_path, monkeypatch):
    options = stages.SegmentConfig.batch_options()
    assert list(options) == [
        "model",
        "normalize",
        "target",
        "overlap",
        "batch_size",
        "device",
        "backend",
        "mpp_override",
        "nuclei",
        "nuclei_model",
        "qc",
    ]
    monkeypatch.chdir(tmp_path)
    assert options["qc"]("auto") == "auto" and options["qc"]("qc-out") == str(tmp_path / "qc-out")
    assert options["nuclei"]("yes") is True and options["overlap"]("16") == 16


@pytest.mark.slow  # about 40 s on a quiet 2-core machine: segment with the nuclei, then the nuclei alone
def test_run_on_the_bundled_slide_writes_its_results(tmp_path):
    result = stages.segment.run(stages.SegmentConfig(slide=EXAMPLE, output=tmp_path / "seg", nuclei=True, readers=0))
    written = (tmp_path / "seg" / "report.json").read_text()
    assert written == json.dumps(result.to_json(), indent=2) + "\n"  # byte-identical, key order included
    report = json.loads(written)
    assert (result.n_tiles, result.nuclei_count, result.tumour_fraction) == (
        report["n_tiles"],
        report["nuclei_count"],
        report["tumour_fraction"],
    )
    assert result.nuclei_ran and 0 < result.tumour_fraction < 1 and result.output == tmp_path / "seg"
    assert list(report).index("nuclei_method") == list(report).index("tumour_fraction") + 1
    without = dataclasses.replace(result, **dict.fromkeys(stages.segment.NUCLEI_KEYS))
    assert not set(stages.segment.NUCLEI_KEYS) & set(without.to_json())  # nuclei keys only when the nuclei ran
    assert stages.SegmentResult.from_json(report, result.output).to_json() == report

    nuclei = stages.nuclei.run(stages.NucleiConfig(input=EXAMPLE, output=tmp_path / "nuc"))
    written = (tmp_path / "nuc" / "nuclei.json").read_text()
    assert written == json.dumps(nuclei.to_json(), indent=2) + "\n"
    assert nuclei.method == "classical" and nuclei.tumour_mask is None and nuclei.cellularity is None
    # segment's nuclei are the same nuclei (the same classical run over the same slide), with its tumour as mask
    by_segment = json.loads((tmp_path / "seg" / "nuclei.json").read_text())
    assert by_segment["nuclei_count"] == nuclei.nuclei_count and by_segment["tumour_mask"] == "array"


def test_a_fluorescence_slide_is_refused_naming_the_qc_parameter(dapi_ndpi, tmp_path):
    """From Python the refusal names the parameter (``qc``), not the CLI's flag."""
    from wsipipe.errors import NotBrightfieldHEError

    with pytest.raises(NotBrightfieldHEError) as refused:
        stages.segment.run(stages.SegmentConfig(slide=dapi_ndpi, output=tmp_path / "out"))
    assert refused.value.parameter == "qc"
    assert str(refused.value).endswith("; pass qc off to run anyway") and "--qc" not in str(refused.value)
    assert not (tmp_path / "out").exists()
