"""The tile server: tiles against our reader and openslide's own Deep Zoom, refused requests,
the files it may touch, where it listens, and the command's exit."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from terminal import foreground_ctrl_c

from wsipipe.errors import InvalidInputError
from wsipipe.slide import open_slide
from wsipipe.view.deepzoom import DeepZoomGrid, encode_jpeg, read_tile

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "data" / "CMU-1-Small-Region.svs"


def fetch(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def raw_get(server, path: str, host: str | None = None) -> int:
    """Status of a GET sent exactly as written (no client-side normalisation of ``..``)."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    connection.putrequest("GET", path, skip_host=host is not None)
    if host is not None:
        connection.putheader("Host", host)
    connection.endheaders()
    status = connection.getresponse().status
    connection.close()
    return status


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return image[..., ::-1] if image.shape[2] == 3 else image[..., [2, 1, 0, 3]]


def test_full_resolution_tiles_are_the_readers_pixels(serve):
    server = serve(EXAMPLE)
    grid = DeepZoomGrid(2220, 2967)
    with open_slide(EXAMPLE) as reader:
        for col, row in [(0, 0), (3, 5), (8, 11)]:  # a corner, the middle, the far corner (cut short)
            box = grid.box(grid.max_level, col, row)
            expected = reader.read_region((box.x0, box.y0), 0, box.size)
            assert np.array_equal(read_tile(reader, grid, box), expected)
            status, body, kind = fetch(f"{server.url}s/0/slide_files/{grid.max_level}/{col}_{row}.jpeg")
            assert (status, kind) == (200, "image/jpeg")
            assert body == encode_jpeg(expected)
    assert box.size == (2220 - 8 * 254 + 1, 2967 - 11 * 254 + 1)


def test_tiles_match_openslide_deepzoom_at_every_level(serve):
    from openslide import OpenSlide
    from openslide.deepzoom import DeepZoomGenerator

    server = serve(EXAMPLE)
    reference = DeepZoomGenerator(OpenSlide(str(EXAMPLE)), tile_size=254, overlap=1, limit_bounds=False)
    grid = DeepZoomGrid(2220, 2967)
    reader = open_slide(EXAMPLE)
    assert grid.max_level + 1 == reference.level_count
    for level in range(reference.level_count):
        assert grid.tile_count(level) == reference.level_tiles[level]
        if min(grid.level_size(level)) < 64:
            continue  # openslide keeps the aspect ratio of the tiniest tiles (PIL's thumbnail): a pixel off
        cols, rows = reference.level_tiles[level]
        for col, row in {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2)}:
            expected = np.asarray(reference.get_tile(level, (col, row)).convert("RGB"))
            pixels = read_tile(reader, grid, grid.box(level, col, row))
            assert pixels.shape == expected.shape
            # A different resampling filter (area here, Lanczos there): close, not equal (a tile one
            # pixel off differs by about 18 on tissue).
            assert np.abs(pixels.astype(int) - expected.astype(int)).mean() < 5, (level, col, row)
            status, body, _ = fetch(f"{server.url}s/0/slide_files/{level}/{col}_{row}.jpeg")
            assert (status, body) == (200, encode_jpeg(pixels))


BAD_REQUESTS = [
    ("/s/0/../../etc/passwd", 400),
    ("/s/0/%2e%2e/%2e%2e/etc/passwd", 400),
    ("//etc/passwd", 404),  # http.server itself folds the leading slashes: /etc/passwd, no such page
    ("/static/../view/index.html", 400),
    ("/s/0/files//etc/passwd", 400),
    ("/s/0/files/..%2freport.json", 400),
    ("/s/0/files/nuclei.csv", 404),  # in OUTDIR, but not a served file
    ("/s/0/files/prediction.zarr", 404),
    ("/static/view.py", 404),
    ("/s/0/slide_files/13/0_0.jpeg", 404),  # unknown level
    ("/s/0/slide_files/12/9_0.jpeg", 404),  # beyond the slide
    ("/s/0/slide_files/12/0_12.jpeg", 404),
    ("/s/0/slide_files/12/-1_0.jpeg", 404),
    ("/s/0/slide_files/0/0_0.png", 404),  # slide tiles are JPEG
    ("/s/0/overlay/secret_files/12/0_0.png", 404),
    ("/s/0/overlay/labels_files/99/0_0.png", 404),
    ("/s/1/", 404),  # only one slide
    ("/etc/passwd", 404),
    ("/s/0/info.json%0a", 400),  # a final newline is not "the end" of a path
]


def test_bad_requests_are_refused_and_nothing_outside_is_opened(serve, segment_out):
    server = serve(segment_out)
    allowed = [str(EXAMPLE.resolve()), str(segment_out.resolve()), str((REPO / "wsipipe").resolve())]
    opened: list[str] = []
    watching = threading.Event()

    def audit(event, args):
        if watching.is_set() and event == "open" and isinstance(args[0], str | Path):
            opened.append(str(Path(args[0]).resolve()))

    sys.addaudithook(audit)
    watching.set()
    try:
        for path, status in BAD_REQUESTS:
            assert raw_get(server, path) == status, path
        for path in (
            "/s/0/info.json",
            "/s/0/overlay/labels_files/12/4_5.png",
            "/s/0/overlay/nuclei_files/12/4_5.png",
            "/s/0/overlay/tissue_files/12/4_5.png",
            "/s/0/files/report.json",
            "/static/openseadragon.min.js",
        ):
            assert raw_get(server, path) == 200, path
    finally:
        watching.clear()
    # Python's own modules (imports, a traceback's source lines) aside.
    python = (str(Path(sys.base_prefix).resolve()), str(Path(sys.prefix).resolve()), "/usr/lib")
    outside = [p for p in opened if not p.startswith((*allowed, *python)) and "site-packages" not in p]
    assert opened and not outside


def test_listens_on_loopback_unless_told(serve, segment_out):
    assert serve(EXAMPLE).server_address[0] == "127.0.0.1"
    assert serve(EXAMPLE, host="0.0.0.0").server_address[0] == "0.0.0.0"
    # On loopback, a page that rebinds its own name to this address is refused.
    server = serve(EXAMPLE)
    assert raw_get(server, "/s/0/slide.dzi", host="attacker.example") == 403
    assert raw_get(server, "/s/0/slide.dzi", host=f"localhost:{server.server_address[1]}") == 200
    assert raw_get(server, "/s/0/slide.dzi", host=f"[::1]:{server.server_address[1]}") == 200
    assert raw_get(server, "/s/0/slide.dzi", host="[::1]") == 200
    assert raw_get(server, "/s/0/slide.dzi", host="[attacker.example") == 403  # not a host at all
    other_loopback = serve(EXAMPLE, host="127.0.0.2")  # all of 127/8 is loopback
    assert raw_get(other_loopback, "/s/0/slide.dzi", host="attacker.example") == 403
    with pytest.raises(InvalidInputError, match="is empty"):
        serve(EXAMPLE, host=" ")  # the socket would read an empty host as every interface


def test_an_output_folder_cannot_make_the_server_read_outside_it_or_hang(serve, segment_out, tmp_path):
    """Links out of the folder, a FIFO among the prediction's chunks and non-finite figures in
    report.json and nuclei.json: those outputs are left out, the rest is served, and info.json
    stays JSON."""
    import os
    import shutil

    secret = tmp_path / "secret.geojson"
    secret.write_text('{"type": "FeatureCollection", "features": [], "secret": 1}')
    folder = tmp_path / "untrusted"
    shutil.copytree(segment_out, folder)
    (folder / "regions.geojson").unlink()
    (folder / "regions.geojson").symlink_to(secret)
    (folder / "nuclei.geojson").unlink()
    (folder / "nuclei.geojson").symlink_to("/proc/self/environ")
    level0 = folder / "prediction.zarr" / "labels" / "classes" / "0"
    chunk = next(p for p in sorted(level0.rglob("*")) if p.is_file() and not p.name.startswith("."))
    chunk.unlink()
    os.mkfifo(chunk)
    report = json.loads((folder / "report.json").read_text())
    report["mpp"] = float("nan")
    (folder / "report.json").write_text(json.dumps(report))
    summary = json.loads((folder / "nuclei.json").read_text())
    summary["tiles"][0]["cellularity"] = float("nan")
    summary["cellularity"] = float("inf")
    (folder / "nuclei.json").write_text(json.dumps(summary))
    server = serve(folder)
    status, body, _ = fetch(server.url + "s/0/info.json")
    info = json.loads(body)  # strict JSON: NaN would not parse in a browser
    assert status == 200 and info["mpp"] == pytest.approx(0.499, abs=1e-3)
    assert {o["key"] for o in info["overlays"]} == {"tissue", "cellularity"}
    assert info["files"] == ["report.json"] and info["regions"] == []
    for name in ("regions.geojson", "nuclei.geojson"):
        assert fetch(server.url + f"s/0/files/{name}")[0] == 404
    assert fetch(server.url + "s/0/overlay/labels_files/12/0_0.png")[0] == 404
    assert fetch(server.url + "s/0/overlay/tissue_files/12/0_0.png")[0] == 200


def test_the_region_table_reads_no_nuclei_file_from_outside_the_folder(serve, segment_out, tmp_path):
    """regions.geojson is real; nuclei.csv and nuclei.geojson link to files elsewhere, which
    would otherwise be counted (or echoed in an error)."""
    import shutil

    folder = tmp_path / "untrusted"
    shutil.copytree(segment_out, folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("nuclei.csv", "nuclei.geojson"):
        shutil.copy(segment_out / name, elsewhere / name)
        (folder / name).unlink()
        (folder / name).symlink_to(elsewhere / name)
    info = json.loads(fetch(serve(folder).url + "s/0/info.json")[1])
    own = json.loads(fetch(serve(segment_out).url + "s/0/info.json")[1])
    assert own["regions"] and any(row["nuclei"] for row in own["regions"])
    assert [row["area_mm2"] for row in info["regions"]] == [row["area_mm2"] for row in own["regions"]]
    assert all(row["nuclei"] is None and row["cellularity"] is None for row in info["regions"])


def test_closing_does_not_wait_for_ever_on_a_stuck_read_ahead(serve, monkeypatch):
    import wsipipe.view.server as view_server

    monkeypatch.setattr(view_server, "WARM_UP_JOIN_S", 0.1)
    server = serve(EXAMPLE)
    server.warm_up.join(60)
    release = threading.Event()
    server.warm_up = threading.Thread(target=release.wait, daemon=True)
    server.warm_up.start()
    closed = threading.Thread(target=server.close)
    closed.start()
    closed.join(10)
    assert not closed.is_alive()  # returned, leaving the slide open to the stuck thread
    release.set()


def test_a_silent_connection_is_closed(serve, monkeypatch):
    import socket

    from wsipipe.view.server import ViewHandler

    assert 0 < ViewHandler.timeout <= 600  # the base class's None would keep it for ever
    monkeypatch.setattr(ViewHandler, "timeout", 0.5)
    server = serve(EXAMPLE)
    with socket.create_connection(server.server_address[:2], timeout=30) as silent:
        assert silent.recv(1) == b""  # the server hung up on it


def test_overlay_is_aligned_with_the_prediction_within_one_pixel(serve, segment_out):
    import zarr

    server = serve(segment_out)
    root = zarr.open_group(str(segment_out / "prediction.zarr"), mode="r", zarr_format=2)
    labels = root["labels"]["classes"]["0"][:]
    report = json.loads((segment_out / "report.json").read_text())
    per_px = report["model"]["mpp"] / report["mpp"]  # level-0 px per prediction px
    grid = DeepZoomGrid(2220, 2967)
    level = grid.max_level - 2  # 4 level-0 px per tile px
    tumour_px = 0
    for col in range(grid.tile_count(level)[0]):
        for row in range(grid.tile_count(level)[1]):
            box = grid.box(level, col, row)
            status, body, kind = fetch(f"{server.url}s/0/overlay/labels_files/{level}/{col}_{row}.png")
            assert (status, kind) == (200, "image/png")
            alpha = decode(body)[..., 3]
            assert alpha.shape == box.size[::-1]
            ys, xs = np.nonzero(alpha)
            # Each drawn pixel's centre, in prediction pixels; tumour must be within one of it.
            py = ((box.y0 + ys + 0.5) * box.scale / per_px).astype(int)
            px = ((box.x0 + xs + 0.5) * box.scale / per_px).astype(int)
            padded = np.pad(labels, 1)
            near = np.zeros(len(py), bool)
            for dy in (0, 1, 2):
                for dx in (0, 1, 2):
                    near |= padded[py + dy, px + dx] == 1
            assert near.all()
            tumour_px += len(ys)
    expected = (labels == 1).sum() * (per_px / 4) ** 2
    assert 0.9 * expected < tumour_px < 1.1 * expected


def test_view_command_prints_the_address_and_stops_on_ctrl_c(segment_out):
    process = subprocess.Popen(
        [sys.executable, "-m", "wsipipe", "view", str(segment_out), "--no-browser", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        preexec_fn=foreground_ctrl_c,
    )
    try:
        line = process.stdout.readline()
        url = re.fullmatch(r"wsipipe view: (http://127\.0\.0\.1:\d+/) \(Ctrl-C to stop\)\n", line).group(1)
        status, body, _ = fetch(url + "s/0/info.json")
        assert status == 200 and json.loads(body)["width"] == 2220
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=20)
        finally:
            process.kill()  # no-op once it has exited; never a server left behind
    assert process.returncode == 130
    assert err == "Stopped.\n"


@pytest.mark.parametrize(
    "args, message, code",
    [
        (["/no/such/place"], "Error: /no/such/place: no such file or folder\n", 2),
        (
            [str(EXAMPLE), "--slide", str(EXAMPLE)],
            "Error: --slide is for an output folder; PATH is already a slide\n",
            2,
        ),
    ],
)
def test_view_command_refuses_bad_input(args, message, code):
    done = subprocess.run(
        [sys.executable, "-m", "wsipipe", "view", *args, "--no-browser", "--port", "0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (code, message)


def test_moved_slide_is_named_with_slide_option(tmp_path, segment_out, serve):
    import shutil

    moved = tmp_path / "out"
    shutil.copytree(segment_out, moved)
    report = json.loads((moved / "report.json").read_text())
    report["slide"] = "/gone/CMU-1-Small-Region.svs"
    (moved / "report.json").write_text(json.dumps(report))
    done = subprocess.run(
        [sys.executable, "-m", "wsipipe", "view", str(moved), "--no-browser", "--port", "0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 2  # a missing slide is bad input
    assert (
        done.stderr
        == f"Error: {moved}: the slide it was made from (/gone/CMU-1-Small-Region.svs) is not there; pass --slide\n"
    )
    server = serve(moved, slide=EXAMPLE)
    assert fetch(server.url + "s/0/slide.dzi")[0] == 200


def test_batch_folder_lists_its_slides_with_figures_and_links(tmp_path, serve):
    import shutil

    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy(EXAMPLE, archive / "a.svs")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsipipe",
            "batch",
            str(archive),
            "-o",
            str(tmp_path / "out"),
            "--job",
            "info",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    server = serve(tmp_path / "out")
    status, body, kind = fetch(server.url)
    page = body.decode()
    assert (status, kind) == (200, "text/html; charset=utf-8")
    assert re.search(r'<a href="/s/0/">a-[0-9a-f]+</a></td><td>2967</td><td>1</td><td>0.499</td>', page), page
    info = json.loads(fetch(server.url + "s/0/info.json")[1])
    assert (info["width"], info["slide"]) == (2220, str(archive / "a.svs"))
    assert fetch(server.url + "s/0/slide_files/12/0_0.jpeg")[0] == 200
    assert fetch(server.url + "s/1/")[0] == 404


def test_a_port_in_use_is_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "wsipipe", "view", str(EXAMPLE), "--no-browser", "--port", str(port)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
    assert done.returncode == 2  # bad input: the user's --port
    assert done.stderr == f"Error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port\n"
