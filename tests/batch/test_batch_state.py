"""status.json / status.csv, input fingerprints and the summary files."""

from __future__ import annotations

import csv
import hashlib
import os

import pytest

from wsipipe.batch.state import HEAD_BYTES, SlideRecord, fingerprint, load_status, save_status
from wsipipe.batch.summary import write_summary
from wsipipe.errors import OutputError


def test_fingerprint_hashes_the_head_only(tmp_path):
    data = bytearray(os.urandom(HEAD_BYTES + 1000))
    path = tmp_path / "s.svs"
    path.write_bytes(data)
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    first = fingerprint(path)
    assert first == {
        "size": HEAD_BYTES + 1000,
        "mtime_ns": 1_700_000_000_000_000_000,
        "head_sha256": hashlib.sha256(bytes(data[:HEAD_BYTES])).hexdigest(),
    }
    data[10] ^= 0xFF  # a change in the head, with size and time kept: still detected
    path.write_bytes(data)
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    assert fingerprint(path)["head_sha256"] != first["head_sha256"]
    assert fingerprint(tmp_path / "missing.svs") == {"size": None, "mtime_ns": None, "head_sha256": None}


def test_status_round_trip_and_csv(tmp_path):
    records = [
        SlideRecord(
            key="a/ä b.svs",
            path="/x/a/ä b.svs",
            name="a_b-0123456789",
            state="done",
            size=5,
            seconds=1.5,
            outputs=["a_b-0123456789/info.json", "a_b-0123456789/thumbnail.png"],
            figures={"tissue_fraction": 0.5},
        ),  # fmt: skip
        SlideRecord(
            key="c, d.svs",
            path="/x/c, d.svs",
            name="c_d-0123456789",
            state="failed",
            error='bad "quote"\tand, comma',
            traceback="errors/c_d-0123456789.txt",
        ),  # fmt: skip
    ]
    save_status(tmp_path, records, "wsipipe.batch.jobs:info_job")
    assert load_status(tmp_path) == {r.key: r for r in records}
    with open(tmp_path / "status.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["key"] for r in rows] == ["a/ä b.svs", "c, d.svs"]
    assert rows[0]["outputs"] == "a_b-0123456789/info.json;a_b-0123456789/thumbnail.png"
    assert rows[0]["seconds"] == "1.5" and rows[0]["mtime_ns"] == ""
    assert rows[1]["error"] == 'bad "quote"\tand, comma'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.csv", "status.json"]  # no temporaries left


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2]",
        '{"slides": [5]}',
        '{"slides": [{"key": "a"}]}',
        '{"slides": [{"key": ["a"], "path": "a.svs", "name": "a"}]}',
        '{"slides": [{"key": "a", "path": 7, "name": "a"}]}',
        '{"slides": [{"key": "a", "path": "a.svs", "name": "a", "figures": [1]}]}',
    ],
)
def test_a_foreign_status_file_is_refused(tmp_path, content):
    (tmp_path / "status.json").write_text(content)
    with pytest.raises(OutputError, match="not a wsipipe batch status file"):
        load_status(tmp_path)


def test_a_status_file_that_is_not_a_regular_file_is_refused_without_reading(tmp_path):
    import os

    os.mkfifo(tmp_path / "status.json")  # reading would wait for a writer for ever
    with pytest.raises(OutputError, match="not a regular file"):
        load_status(tmp_path)


def test_summary_columns_blanks_and_escaping(tmp_path):
    records = [
        SlideRecord(
            key="a.svs",
            path="",
            name="a",
            state="done",
            seconds=2.0,
            figures={"zeta": 1, "cellularity": 0.25, "tumour_fraction": 0.123456789},
        ),  # fmt: skip
        SlideRecord(key="<b>.svs", path="", name="b", state="failed", error="<script>x</script>"),
    ]
    write_summary(tmp_path, records)
    with open(tmp_path / "summary.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["name", "key", "state", "seconds", "tumour_fraction", "cellularity", "zeta", "error"]
    assert rows[1] == ["a", "a.svs", "done", "2.00", "0.123457", "0.25", "1", ""]
    assert rows[2] == ["b", "<b>.svs", "failed", "", "", "", "", "<script>x</script>"]
    html = (tmp_path / "summary.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "2 slides: 1 done, 1 failed" in html
