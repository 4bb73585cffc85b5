import pytest

from wsipipe.errors import OutputError
from wsipipe.files import atomic_path, folder_lock, make_output_folder


def test_a_folder_lock_refuses_a_second_process_until_the_first_dies(tmp_path, hold_folder_lock):
    holder = hold_folder_lock(tmp_path)
    with pytest.raises(OutputError, match=f"^{tmp_path}: another wsipipe run is writing to this folder$"):
        with folder_lock(tmp_path):
            pass
    with folder_lock(tmp_path, ".other.lock"):  # another lock name is another lock
        pass
    holder.kill()  # as kill -9 would: the kernel drops the lock, nothing stays behind to clear by hand
    holder.wait()
    with folder_lock(tmp_path):
        with folder_lock(tmp_path):  # nested in one process (segment --nuclei runs the nuclei stage here)
            pass
    hold_folder_lock(tmp_path)  # released after the nested uses


def test_an_unwritable_folder_is_one_output_error(tmp_path):
    with pytest.raises(OutputError, match="cannot lock the output folder"):
        with folder_lock(tmp_path / "missing"):
            pass


def test_atomic_path_keeps_the_old_content_when_writing_fails(tmp_path):
    target = tmp_path / "nuclei.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed by a bug mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuclei.csv"]
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary.name != target.name
        temporary.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuclei.csv"]


def test_atomic_path_replaces_a_folder_with_a_folder(tmp_path):
    store = tmp_path / "mask.zarr"
    (store / "old").mkdir(parents=True)
    with atomic_path(store) as temporary:
        (temporary / "new").mkdir(parents=True)
    assert [p.name for p in store.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.zarr"]


def test_the_lock_deletes_what_a_killed_writer_left_and_nothing_else(tmp_path):
    (tmp_path / ".nuclei.csv.0123abcd.tmp").write_text("half")
    (tmp_path / ".mask.zarr.89abcdef.tmp").mkdir()
    kept = ["nuclei.csv", ".nuclei.csv.tmp", "notes.0123abcd.tmp"]
    for name in kept:
        (tmp_path / name).write_text("mine")
    with folder_lock(tmp_path):
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + [".wsipipe.lock"])


def test_an_output_folder_is_made_or_refused_in_one_line(tmp_path):
    assert make_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=f"^{blocker}/out: cannot create the output folder \\(Not a directory\\)$"):
        make_output_folder(blocker / "out")
