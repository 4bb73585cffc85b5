"""What an untrusted output or batch folder may make the viewer read."""

from __future__ import annotations

import os

from wsipipe.view.sources import _slide_folder, file_inside, plain_tree


def test_a_batch_record_names_one_plain_folder_inside_the_batch(tmp_path):
    batch = tmp_path / "batch"
    (batch / "slide-1").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (batch / "linked").symlink_to(tmp_path / "elsewhere")
    assert _slide_folder(batch, "slide-1") == batch / "slide-1"
    for name in ("../elsewhere", str(tmp_path / "elsewhere"), "/etc", "slide-1/..", "linked", "", ".", "..", 7, None):
        assert _slide_folder(batch, name) is None, name


def test_only_regular_files_and_folders_inside_are_read(tmp_path):
    folder = tmp_path / "out"
    (folder / "store" / "0").mkdir(parents=True)
    (folder / "report.json").write_text("{}")
    (folder / "store" / "0" / "0").write_bytes(b"chunk")
    (tmp_path / "secret").write_text("x")
    (folder / "out-link").symlink_to(tmp_path / "secret")
    (folder / "in-link").symlink_to(folder / "report.json")
    (folder / "loop").symlink_to(folder / "loop")
    os.mkfifo(folder / "fifo")
    assert file_inside(folder, "report.json") == folder / "report.json"
    assert file_inside(folder, "in-link") == folder / "in-link"  # a link that stays inside is read
    for name in ("out-link", "loop", "fifo", "missing", "store"):
        assert file_inside(folder, name) is None, name
    assert plain_tree(folder / "store")
    os.mkfifo(folder / "store" / "0" / "1")
    assert not plain_tree(folder / "store")
    (folder / "store" / "0" / "1").unlink()
    (folder / "store" / "0" / "1").symlink_to(tmp_path / "secret")
    assert not plain_tree(folder / "store") and not plain_tree(folder / "missing")
