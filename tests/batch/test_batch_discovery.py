"""Finding a batch's slides: recursive folder search, CSV manifests, and refusing what cannot work."""

from __future__ import annotations

import os

import pytest

from wsipipe.batch.discovery import discover, parse_patterns
from wsipipe.batch.jobs import job_spec
from wsipipe.batch.naming import output_name
from wsipipe.errors import InvalidInputError


def _touch(root, *keys):
    for key in keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"x")


def test_folder_search_is_recursive_case_insensitive_and_sorted(tmp_path):
    _touch(tmp_path, "b/2.SVS", "a/x/1.ndpi", "a/1.tiff", "c.tif", "notes.txt", "d/.tmp.svs.part")
    entries = discover(tmp_path)
    assert [e.key for e in entries] == ["a/1.tiff", "a/x/1.ndpi", "b/2.SVS", "c.tif"]
    assert entries[0].path == (tmp_path / "a/1.tiff").resolve()
    assert entries[0].name == output_name("a/1.tiff")
    assert [e.key for e in discover(tmp_path, " *.svs , *.NDPI ")] == ["a/x/1.ndpi", "b/2.SVS"]


def test_outdir_inside_input_and_directory_links_are_not_searched(tmp_path):
    _touch(tmp_path, "in/s.svs", "in/out/old.svs")
    os.symlink(tmp_path / "in", tmp_path / "in/loop")  # a link back up: must not recurse forever
    entries = discover(tmp_path / "in", exclude=tmp_path / "in/out")
    assert [e.key for e in entries] == ["s.svs"]


def test_refusals(tmp_path):
    with pytest.raises(InvalidInputError, match="no such folder or manifest"):
        discover(tmp_path / "missing")
    with pytest.raises(InvalidInputError, match="no file matches"):
        discover(tmp_path)
    (tmp_path / "list.txt").write_text("slide\n")
    with pytest.raises(InvalidInputError, match="folder of slides or a .csv manifest"):
        discover(tmp_path / "list.txt")
    with pytest.raises(InvalidInputError, match="empty"):
        parse_patterns(" , ")


def test_manifest_paths_annotations_and_options(tmp_path):
    _touch(tmp_path, "m/slides/a b.svs", "elsewhere/c.svs")
    manifest = tmp_path / "m" / "list.csv"
    manifest.write_text(
        "\ufeffSlide,Annotation,MPP-Override\n"
        "slides/a b.svs,ann/a.xml,0.5\n"
        "\n"
        f"{tmp_path / 'elsewhere/../elsewhere/c.svs'},,\n",
        encoding="utf-8",
    )
    first, second = discover(manifest)
    assert (first.key, first.path) == ("slides/a b.svs", (tmp_path / "m/slides/a b.svs").resolve())
    assert first.annotation == (tmp_path / "m/ann/a.xml").resolve()
    assert first.options == {"mpp_override": "0.5"}
    assert second.key == (tmp_path / "elsewhere/c.svs").as_posix()
    assert second.annotation is None and second.options == {}
    assert job_spec("info").convert_options(first.options, "x") == {"mpp_override": 0.5}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path\na.svs\n", "needs a 'slide' column"),
        ("slide,slide\na.svs,b.svs\n", "unique"),
        ("slide\na.svs\n./a.svs\n", "line 3: ./a.svs is already listed on line 2"),
        ("slide,annotation\n,a.xml\n", "line 2: empty 'slide' cell"),
        ("slide\na.svs,extra\n", "more cells than header"),
        ("slide\n", "lists no slides"),
        ("", "is empty"),
    ],
)
def test_bad_manifests(tmp_path, text, message):
    manifest = tmp_path / "list.csv"
    manifest.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidInputError, match=message):
        discover(manifest)


def test_options_a_job_does_not_take_are_refused():
    info = job_spec("info")
    with pytest.raises(InvalidInputError, match="job 'info' takes no option 'model'"):
        info.convert_options({"model": "unet"}, "list.csv")
    with pytest.raises(InvalidInputError, match="mpp_override='-1'"):
        info.convert_options({"mpp_override": "-1"}, "list.csv")


def test_link_loops_dangling_links_and_fifos_are_listed_to_fail_alone(tmp_path):
    _touch(tmp_path, "a.svs", "sub/b.svs")
    os.symlink("loop2.svs", tmp_path / "loop1.svs")
    os.symlink("loop1.svs", tmp_path / "loop2.svs")
    os.symlink("gone.svs", tmp_path / "dangling.svs")
    os.mkfifo(tmp_path / "pipe.svs")
    for name, target in {"up": "..", "self": ".", "root": "/", "top": str(tmp_path)}.items():
        os.symlink(target, tmp_path / "sub" / name)  # directory cycles through links to ancestors
    entries = discover(tmp_path)
    assert [e.key for e in entries] == ["a.svs", "dangling.svs", "loop1.svs", "loop2.svs", "pipe.svs", "sub/b.svs"]
    assert {e.key: e.path for e in entries}["pipe.svs"] == tmp_path / "pipe.svs"
    manifest = tmp_path / "list.csv"
    manifest.write_text("slide,annotation\nloop1.svs,loop2.svs\n", encoding="utf-8")
    (entry,) = discover(manifest)
    assert entry.key == "loop1.svs" and entry.path.parent == tmp_path and entry.annotation.parent == tmp_path
