"""``stages.qc.run`` on the real slide: qc.json is the result's ``to_json()`` byte for byte, and the
same as ``wsipipe qc`` writes apart from timings."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import zarr
from typer.testing import CliRunner

from wsipipe import stages
from wsipipe.cli.main import app


def test_run_writes_qc_json_as_its_result_and_as_the_command(slides_dir, tmp_path):
    slide = slides_dir / "CMU-1-Small-Region.svs"
    result = stages.qc.run(stages.QcConfig(slide=slide, output=tmp_path / "api"))
    written = (tmp_path / "api" / "qc.json").read_text()
    assert written == json.dumps(result.to_json(), indent=2) + "\n"  # byte-identical
    assert result.output == tmp_path / "api"
    summary = json.loads(written)
    assert list(summary) == [field.name for field in dataclasses.fields(result) if field.name != "output"]
    assert (result.usable, result.verdict_rule, result.width, result.height) == (
        summary["usable"],
        summary["verdict_rule"],
        2220,
        2967,
    )
    assert result.brightfield["value"] is True and set(result.artefacts) == set(summary["artefacts"])

    cli = CliRunner().invoke(app, ["qc", str(slide), "-o", str(tmp_path / "cli"), "-q"])
    assert cli.exit_code == 0, cli.output
    by_command = json.loads((tmp_path / "cli" / "qc.json").read_text())
    assert {**by_command, "timings_s": None} == {**summary, "timings_s": None}
    assert list(by_command) == list(summary)
    for name in ("usable", "tissue", "pen"):
        api = zarr.open_array(str(tmp_path / "api" / "qc.zarr" / name), mode="r")[...]
        assert np.array_equal(api, zarr.open_array(str(tmp_path / "cli" / "qc.zarr" / name), mode="r")[...])
    flagged = ", ".join(
        f"{name} {figures['fraction']:.1%}" for name, figures in result.artefacts.items() if figures["fraction"] > 0
    )
    assert cli.output == (
        f"CMU-1-Small-Region.svs: usable ({result.verdict_reason}); flagged: {flagged or 'nothing'} "
        f"-> {tmp_path / 'cli'}\n"
    )
