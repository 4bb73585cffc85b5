"""A corpus of bad inputs through every command, as a user meets them: the real CLI in a subprocess.

Each case must end with exactly one line on stderr ("Error: ..."), the documented exit code (2 bad
input or option, 1 run-time failure), no traceback, its inputs unchanged, nothing in its output
location and no process left behind. The cases run a few at a time (most of their time is Python
start-up) before the checks; ``-k`` or ``-m 'not slow'`` runs only the chosen ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
#: Longer than any case needs on a loaded 2-core machine; a case still running then (a FIFO read,
#: say) has hung.
CASE_TIMEOUT = 90
#: Cases run side by side.
PARALLEL = 4
BAD_INPUT = 2
#: The cases all run in the first test's setup: on a loaded machine that is more than the default.
pytestmark = pytest.mark.timeout(1800)

NO_MPP = "TCGA-CR-7395-01A-01-TS1.svs"
GOOD = "CMU-1-Small-Region.svs"
SQUARE = [[[100, 100], [900, 100], [900, 900], [100, 900], [100, 100]]]


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # "{c}" is the corpus folder, "{s}" the shared slides, "{o}" the case's output
    code: int
    needle: str  # a part of the one error line
    slow: bool = False


def _geojson(classification) -> str:
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": SQUARE},
        "properties": {"objectType": "annotation", "classification": classification},
    }
    return json.dumps({"type": "FeatureCollection", "features": [feature]})


def _make_corpus(root: Path, slides: Path) -> None:
    """Every bad file the cases name, in ``root``."""
    good = (slides / GOOD).read_bytes()
    (root / "folder.svs").mkdir()
    (root / "empty.svs").touch()
    (root / "truncated.svs").write_bytes(good[: len(good) * 6 // 10])
    (root / "text.svs").write_text("this is not a slide\n")
    os.mkfifo(root / "pipe.svs")
    (root / "loop-a.svs").symlink_to(root / "loop-b.svs")
    (root / "loop-b.svs").symlink_to(root / "loop-a.svs")
    (root / "dangling.svs").symlink_to(root / "nowhere.svs")
    server = socket.socket(socket.AF_UNIX)  # opening a socket file fails (ENXIO) even as root
    server.bind(str(root / "socket.svs"))
    server.close()
    (root / "empty.xml").touch()
    (root / "laughs.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l "lol"><!ENTITY l1 "&l;&l;&l;&l;&l;&l;&l;&l;">'
        '<!ENTITY l2 "&l1;&l1;&l1;&l1;&l1;&l1;&l1;&l1;">]><ASAP_Annotations><Annotations>&l2;</Annotations></ASAP_Annotations>'
    )
    (root / "secret.txt").write_text("top-secret-4242")
    (root / "xxe.xml").write_text(
        f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://{root / "secret.txt"}">]>'
        "<ASAP_Annotations><Annotations>&x;</Annotations></ASAP_Annotations>"
    )
    (root / "malformed.geojson").write_text('{"type": "FeatureCollection", "features": [')
    (root / "tumor.geojson").write_text(_geojson({"name": "Tumor"}))
    (root / "model-missing.safetensors").unlink(missing_ok=True)
    (root / "pickle.safetensors").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    (root / "random.safetensors").write_bytes(os.urandom(4096))
    (root / "existing-file").write_text("keep me\n")
    (root / "existing.geojson").write_text("keep me\n")
    (root / "manifest.csv").write_text(f"slide,colour\n{slides / GOOD},red\n")
    (root / "batch-in").mkdir()
    (root / "batch-in" / GOOD).symlink_to(slides / GOOD)
    (root / "image.png").write_bytes((slides.parent / "stain" / "torchstain_source.png").read_bytes())


def _slide_cases() -> list[Case]:
    """The bad slide files through every command that opens a slide."""
    files = {
        "missing": ("missing.svs", "no such file"),
        "directory": ("folder.svs", "is a directory"),
        "empty": ("empty.svs", "empty.svs"),
        "text": ("text.svs", "not a readable slide"),
        "broken": ("{s}/broken.svs", "not a readable slide"),
        "fifo": ("pipe.svs", "not a regular file"),  # waits for reliab-a: open only regular files
        "symlink-loop": ("loop-a.svs", "loop-a.svs"),
        "dangling-link": ("dangling.svs", "dangling.svs"),
        "socket": ("socket.svs", "socket.svs"),
        "file-as-folder": ("text.svs/slide.svs", "text.svs/slide.svs"),
    }
    commands = {
        "info": ("info", "{f}"),
        "tile": ("tile", "{f}", "-o", "{o}.zarr", "-q"),
        "segment": ("segment", "{f}", "-o", "{o}", "-q", "--device", "cpu"),
        "nuclei": ("nuclei", "{f}", "-o", "{o}", "-q"),
        "mask": ("annotations", "mask", "{c}/tumor.geojson", "--slide", "{f}", "--mpp", "8", "-o", "{o}.png"),
    }
    cases = []
    for kind, (name, needle) in files.items():
        path = name if name.startswith("{s}") else "{c}/" + name
        for command, argv in commands.items():
            cases.append(
                Case(
                    f"{command}-{kind}",
                    tuple(a.replace("{f}", path) for a in argv),
                    BAD_INPUT,
                    needle,
                    slow=command in ("segment", "nuclei") and kind not in ("missing", "broken"),
                )
            )
    cases.append(
        Case(
            "tile-truncated",
            ("tile", "{c}/truncated.svs", "-o", "{o}.zarr", "-q", "--workers", "1"),
            BAD_INPUT,
            "truncated.svs",
        )
    )
    return cases


CASES = (
    _slide_cases()
    + [
        # annotations
        Case("convert-missing", ("annotations", "convert", "{c}/none.xml", "{o}.geojson"), BAD_INPUT, "no such file"),
        Case(
            "convert-empty-xml",
            ("annotations", "convert", "{c}/empty.xml", "{o}.geojson"),
            BAD_INPUT,
            "the file is empty",
        ),
        Case(
            "convert-billion-laughs", ("annotations", "convert", "{c}/laughs.xml", "{o}.geojson"), BAD_INPUT, "DOCTYPE"
        ),
        Case("convert-external-entity", ("annotations", "convert", "{c}/xxe.xml", "{o}.geojson"), BAD_INPUT, "DOCTYPE"),
        Case(
            "convert-malformed-geojson",
            ("annotations", "convert", "{c}/malformed.geojson", "{o}.xml"),
            BAD_INPUT,
            "malformed JSON",
        ),
        Case("convert-fifo", ("annotations", "convert", "{c}/pipe.svs", "{o}.xml"), BAD_INPUT, "pipe.svs"),
        Case(
            "convert-output-folder-missing",
            ("annotations", "convert", "{c}/tumor.geojson", "{o}/no/x.xml"),
            BAD_INPUT,
            "does not exist",
        ),
        Case(
            "convert-output-exists",
            ("annotations", "convert", "{c}/tumor.geojson", "{c}/existing.geojson"),
            BAD_INPUT,
            "--overwrite",
        ),
        Case(
            "mask-strict-label-map-matches-nothing",
            (
                "annotations",
                "mask",
                "{c}/tumor.geojson",
                "--slide",
                "{s}/" + GOOD,
                "--mpp",
                "8",
                "-o",
                "{o}.png",
                "--label-map",
                "Stroma=1",
                "--strict",
            ),
            BAD_INPUT,
            "no annotation matches the label map Stroma=1",
        ),
        Case(
            "mask-bad-label-map",
            (
                "annotations",
                "mask",
                "{c}/tumor.geojson",
                "--slide",
                "{s}/" + GOOD,
                "--mpp",
                "8",
                "-o",
                "{o}.png",
                "--label-map",
                "Tumor=x",
            ),
            BAD_INPUT,
            "is not an integer",
        ),
        Case(
            "mask-no-mpp",
            ("annotations", "mask", "{c}/tumor.geojson", "--slide", "{s}/" + NO_MPP, "--mpp", "8", "-o", "{o}.png"),
            BAD_INPUT,
            "--mpp-override",
        ),
        Case(
            "mask-output-is-a-folder-path",
            (
                "annotations",
                "mask",
                "{c}/tumor.geojson",
                "--slide",
                "{s}/" + GOOD,
                "--mpp",
                "8",
                "-o",
                "{c}/text.svs/m.png",
            ),
            BAD_INPUT,
            "does not exist",
        ),
        # tile
        Case(
            "tile-strict-label-map-matches-nothing",
            (
                "tile",
                "{s}/" + GOOD,
                "-o",
                "{o}.zarr",
                "-q",
                "--annotations",
                "{c}/tumor.geojson",
                "--label-map",
                "Stroma=1",
                "--strict",
            ),
            BAD_INPUT,
            "no annotation matches the label map Stroma=1",
        ),
        Case(
            "tile-bad-overlap",
            ("tile", "{s}/" + GOOD, "-o", "{o}.zarr", "--overlap", "512", "--tile-size", "512"),
            BAD_INPUT,
            "overlap",
        ),
        Case(
            "tile-no-mpp",
            ("tile", "{s}/" + NO_MPP, "-o", "{o}.zarr", "-q"),
            BAD_INPUT,
            "pass --mpp-override X (µm per pixel at level 0) or --level N",
        ),
        Case(
            "tile-output-is-a-file",
            ("tile", "{s}/" + GOOD, "-o", "{c}/existing-file", "-q"),
            BAD_INPUT,
            "existing-file",
        ),
        Case(
            "tile-output-under-a-file",
            ("tile", "{s}/" + GOOD, "-o", "{c}/text.svs/t.zarr", "-q"),
            BAD_INPUT,
            "text.svs",
        ),
        # segment
        Case(
            "segment-bad-overlap",
            ("segment", "{s}/" + GOOD, "-o", "{o}", "--overlap", "100000", "--device", "cpu"),
            BAD_INPUT,
            "--overlap",
        ),
        Case(
            "segment-bad-batch-size",
            ("segment", "{s}/" + GOOD, "-o", "{o}", "--batch-size", "0"),
            BAD_INPUT,
            "--batch-size",
        ),
        Case(
            "segment-cuda-without-gpu", ("segment", "{s}/" + GOOD, "-o", "{o}", "--device", "cuda"), BAD_INPUT, "cuda"
        ),
        Case(
            "segment-no-mpp",
            ("segment", "{s}/" + NO_MPP, "-o", "{o}", "--device", "cpu"),
            BAD_INPUT,
            "pass --mpp-override X (µm per pixel at level 0)",
        ),
        Case(
            "segment-model-missing",
            ("segment", "{s}/" + GOOD, "-o", "{o}", "--model", "{c}/model-missing.safetensors", "--device", "cpu"),
            BAD_INPUT,
            "no such model file",
        ),
        Case(
            "segment-model-pickle",
            ("segment", "{s}/" + GOOD, "-o", "{o}", "--model", "{c}/pickle.safetensors", "--device", "cpu"),
            BAD_INPUT,
            "not a safetensors model file",
        ),
        Case(
            "segment-output-is-a-file",
            ("segment", "{s}/" + GOOD, "-o", "{c}/existing-file", "--device", "cpu"),
            BAD_INPUT,
            "existing-file",
        ),
        Case(
            "segment-output-under-a-file",
            ("segment", "{s}/" + GOOD, "-o", "{c}/text.svs/out", "--device", "cpu"),
            BAD_INPUT,
            "cannot create the output folder",
        ),
        # nuclei
        Case(
            "nuclei-model-random-bytes",
            ("nuclei", "{s}/" + GOOD, "-o", "{o}", "--model", "{c}/random.safetensors"),
            BAD_INPUT,
            "not a safetensors model file",
        ),
        Case(
            "nuclei-model-missing",
            ("nuclei", "{s}/" + GOOD, "-o", "{o}", "--model", "{c}/model-missing.safetensors"),
            BAD_INPUT,
            "model-missing.safetensors",
        ),
        Case(
            "nuclei-output-under-a-file",
            ("nuclei", "{c}/image.png", "-o", "{c}/text.svs/out", "--mpp-override", "0.5"),
            BAD_INPUT,
            "text.svs",
        ),
        # normalize
        Case(
            "normalize-missing-store",
            ("normalize", "{c}/none.zarr", "-o", "{o}.zarr", "--device", "cpu"),
            BAD_INPUT,
            "no such store",
        ),
        Case(
            "normalize-store-is-a-slide",
            ("normalize", "{s}/" + GOOD, "-o", "{o}.zarr", "--device", "cpu"),
            BAD_INPUT,
            GOOD,
        ),
        # batch
        Case("batch-missing-input", ("batch", "{c}/none", "-o", "{o}", "-q"), BAD_INPUT, "none"),
        Case("batch-manifest-unknown-column", ("batch", "{c}/manifest.csv", "-o", "{o}", "-q"), BAD_INPUT, "colour"),
        Case(
            "batch-cuda-without-gpu",
            ("batch", "{c}/batch-in", "-o", "{o}", "-q", "--device", "cuda"),
            BAD_INPUT,
            "cuda",
        ),
        Case(
            "batch-model-pickle",
            ("batch", "{c}/batch-in", "-o", "{o}", "-q", "--model", "{c}/pickle.safetensors"),
            BAD_INPUT,
            "pickle.safetensors",
        ),
        # evaluate, predict, models
        Case(
            "evaluate-model-missing",
            ("evaluate", "{c}/model-missing.safetensors", "--data", "{c}"),
            BAD_INPUT,
            "no such model file",
        ),
        Case(
            "predict-model-pickle",
            ("predict", "{c}/pickle.safetensors", "{c}/image.png", "-o", "{o}.png"),
            BAD_INPUT,
            "not a safetensors model file",
        ),
        Case(
            "predict-output-folder-missing",
            ("predict", "{c}/random.safetensors", "{c}/image.png", "-o", "{o}/no/p.png"),
            BAD_INPUT,
            "does not exist",
        ),
        Case(
            "models-info-random-bytes",
            ("models", "info", "{c}/random.safetensors"),
            BAD_INPUT,
            "not a safetensors model file",
        ),
        Case(
            "models-info-missing", ("models", "info", "{c}/model-missing.safetensors"), BAD_INPUT, "no such model file"
        ),
        # synth
        Case(
            "synth-output-exists",
            ("synth", "{c}/existing-file", "--width", "64", "--height", "64"),
            BAD_INPUT,
            "--overwrite",
        ),
        Case("synth-bad-size", ("synth", "{o}.tif", "--width", "0", "--height", "64"), BAD_INPUT, "--width"),
        Case(
            "synth-output-under-a-file",
            ("synth", "{c}/text.svs/s.tif", "--width", "64", "--height", "64"),
            BAD_INPUT,
            "text.svs",
        ),
    ]
    + [
        # usage errors: typer's own, one line each
        Case(f"{name}-unknown-option", (*command, "--no-such-option"), BAD_INPUT, "No such option: --no-such-option")
        for name, command in [
            ("info", ("info", "x.svs")),
            ("tile", ("tile",)),
            ("segment", ("segment",)),
            ("nuclei", ("nuclei",)),
            ("convert", ("annotations", "convert")),
            ("normalize", ("normalize",)),
            ("batch", ("batch",)),
            ("evaluate", ("evaluate",)),
            ("predict", ("predict",)),
            ("models-info", ("models", "info")),
            ("synth", ("synth",)),
            ("global", ()),
        ]
    ]
    + [
        Case(f"{name}-missing-argument", command, BAD_INPUT, "Missing")
        for name, command in [
            ("info", ("info", "--json")),
            ("tile", ("tile", "-o", "{o}.zarr")),
            ("segment", ("segment", "-o", "{o}")),
            ("nuclei", ("nuclei", "-o", "{o}")),
            ("mask", ("annotations", "mask", "{c}/tumor.geojson")),
            ("batch", ("batch", "-o", "{o}")),
            ("synth", ("synth", "{o}.tif")),
            ("models-info", ("models", "info", "--json")),
        ]
    ]
    + [Case("unknown-command", ("no-such-command",), BAD_INPUT, "No such command")]
)


@dataclass
class Outcome:
    returncode: int | None
    stderr: str
    left_behind: list[str]
    left_running: list[str]


def _tree_hashes(root: Path) -> dict[str, str]:
    hashes = {}
    for path in sorted(root.rglob("*")):
        if not path.is_symlink() and path.is_file():
            hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def _marked(marker: str) -> list[psutil.Process]:
    """Processes started for one case (they inherit its marker in their environment)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("WSIPIPE_TEST_CASE") == marker:
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def _run(case: Case, corpus: Path, slides: Path, outroot: Path) -> Outcome:
    out = outroot / case.id  # an output folder, or with a suffix an output file
    argv = [a.replace("{c}", str(corpus)).replace("{s}", str(slides)).replace("{o}", str(out)) for a in case.argv]
    marker = uuid.uuid4().hex
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "WSIPIPE_TEST_CASE": marker,
        "CUDA_VISIBLE_DEVICES": "",
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "wsipipe", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=CASE_TIMEOUT,
            stdin=subprocess.DEVNULL,
            cwd=corpus,
        )
        returncode, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:  # the run hangs: its helpers are killed below
        returncode, stderr = (
            None,
            (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or ""),
        )
    deadline = time.monotonic() + 5
    while (left := _marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    names = []
    for process in left:
        try:
            names.append(" ".join(process.cmdline()[:4]))
            process.kill()
        except psutil.Error:  # it ended meanwhile
            continue
    return Outcome(returncode, stderr, _left_behind(outroot, case.id), names)


def _left_behind(outroot: Path, name: str) -> list[str]:
    """What a case left of its output ``name`` (a folder, or a file NAME.ext) and its temporaries;
    an empty output folder counts as nothing."""
    left = []
    for path in outroot.iterdir():
        if path.name.lstrip(".") == name or path.name.lstrip(".").startswith(name + "."):
            left += [f"{path.name}/{p.name}" for p in path.iterdir()] if path.is_dir() else [path.name]
    return left


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, slides_dir) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    _make_corpus(root, slides_dir)
    return root


@pytest.fixture(scope="module")
def outcomes(request, corpus, slides_dir, tmp_path_factory) -> dict[str, Outcome]:
    """Run the selected cases, ``PARALLEL`` at a time; check the corpus is unchanged after all."""
    chosen = {
        item.callspec.params["case"].id
        for item in request.session.items
        if getattr(item, "callspec", None) and isinstance(item.callspec.params.get("case"), Case)
    }
    before = _tree_hashes(corpus)
    outroot = tmp_path_factory.mktemp("outputs")
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {c.id: pool.submit(_run, c, corpus, slides_dir, outroot) for c in CASES if c.id in chosen}
        results = {key: future.result() for key, future in futures.items()}
    assert _tree_hashes(corpus) == before, "a bad-input run modified its inputs"
    return results


def _param(case: Case):
    marks = [pytest.mark.slow] if case.slow else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_gives_one_line_and_the_documented_code(case, outcomes):
    outcome = outcomes[case.id]
    lines = outcome.stderr.splitlines()
    assert outcome.returncode is not None, f"{case.id}: still running after {CASE_TIMEOUT} s"
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), outcome.stderr
    assert case.needle in lines[0], lines[0]
    assert outcome.returncode == case.code, lines[0]
    assert outcome.left_running == [], f"left running: {outcome.left_running}"
    assert outcome.left_behind == [], f"left behind: {outcome.left_behind}"


def test_the_corpus_covers_what_the_issue_lists():
    """At least the 35 kinds of issue 25, through every command that takes files."""
    kinds = {c.id.split("-", 1)[1] for c in CASES}
    commands = {c.argv[0] for c in CASES if c.argv and not c.argv[0].startswith("-")}
    assert len(kinds) >= 35, sorted(kinds)
    assert commands >= {
        "info",
        "tile",
        "segment",
        "nuclei",
        "annotations",
        "normalize",
        "batch",
        "evaluate",
        "predict",
        "models",
        "synth",
    }


def test_string_classification_keeps_its_label(corpus, slides_dir, tmp_path):
    """Older QuPath exports write ``"classification": "Tumor"``: the label survives to the mask."""
    source = tmp_path / "old-qupath.geojson"
    source.write_text(_geojson("Tumor"))
    out = tmp_path / "m.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsipipe",
            "annotations",
            "mask",
            str(source),
            "--slide",
            str(slides_dir / GOOD),
            "--mpp",
            "8",
            "-o",
            str(out),
            "--label-map",
            "Tumor=1",
            "--strict",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=CASE_TIMEOUT,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    import numpy as np
    from PIL import Image

    mask = np.asarray(Image.open(out))
    # The square spans level-0 x, y in [100, 900): 800 / 16 = 50 mask pixels (8 µm/px from 0.499 µm/px).
    assert mask.max() == 1 and abs(int(mask.sum()) - 50 * 50) <= 2 * 50 + 1
