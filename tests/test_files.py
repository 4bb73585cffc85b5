import hashlib
import os
import re

import pytest

from wsipipe.errors import OutputError, SlideOpenError
from wsipipe.files import (
    atomic_path,
    check_regular_file,
    file_sha256,
    folder_lock,
    make_output_folder,
    output_lock,
    remove_temporaries,
    staged_outputs,
)


def test_a_folder_lock_refuses_a_second_process_until_the_first_dies(tmp_path, hold_folder_lock):
    holder = hold_folder_lock(tmp_path)
    with (
        pytest.raises(OutputError, match=f"^{tmp_path}: another wsipipe run is writing to this folder$"),
        folder_lock(tmp_path),
    ):
        pass
    with folder_lock(tmp_path, ".other.lock"):  # another lock name is another lock
        pass
    holder.kill()  # as kill -9 would: the kernel drops the lock, nothing stays behind to clear by hand
    holder.wait()
    with folder_lock(tmp_path), folder_lock(tmp_path):  # nested in one process (segment --nuclei runs nuclei here)
        pass
    hold_folder_lock(tmp_path)  # released after the nested uses


def test_an_unwritable_folder_is_one_output_error(tmp_path):
    with pytest.raises(OutputError, match="cannot lock the output folder"), folder_lock(tmp_path / "missing"):
        pass


def test_atomic_path_keeps_the_old_content_when_writing_fails(tmp_path):
    target = tmp_path / "nuclei.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
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
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "nuclei.csv") as temporary:
        temporary.write_text("half")
        left = temporary.name
        raise KeyboardInterrupt  # a SIGKILL here would leave the temporary; name it as it was
    assert re.fullmatch(r"\.nuclei\.csv\.wsipipe-[0-9a-f]{8}\.tmp", left)
    (tmp_path / left).write_text("half")
    (tmp_path / ".mask.zarr.wsipipe-89abcdef.tmp").mkdir()
    # A user's own files, however close to atomic_path's names: only the marker proves a file is ours.
    kept = [
        "nuclei.csv",
        ".nuclei.csv.tmp",
        "notes.0123abcd.tmp",
        ".notes.txt.0123abcd.tmp",
        ".x.wsipipe-0123abcd.tmp.bak",
    ]
    for name in kept:
        (tmp_path / name).write_text("mine")
    (tmp_path / ".scans.89abcdef.tmp").mkdir()
    with folder_lock(tmp_path):
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, ".scans.89abcdef.tmp", ".wsipipe.lock"])


def test_an_output_lock_covers_one_output_and_its_own_temporaries(tmp_path, hold_folder_lock):
    (tmp_path / ".k.tif.wsipipe-0123abcd.tmp").write_text("a killed synth's")
    (tmp_path / ".other.tif.wsipipe-89abcdef.tmp").write_text("another output's, maybe being written")
    holder = hold_folder_lock(tmp_path, ".k.tif.lock")
    with (
        pytest.raises(OutputError, match=f"^{tmp_path / 'k.tif'}: another wsipipe run is writing it$"),
        output_lock(tmp_path / "k.tif"),
    ):
        pass
    with output_lock(tmp_path / "other2.tif"):  # another output of the same folder: not blocked
        pass
    holder.kill()
    holder.wait()
    with output_lock(tmp_path / "k.tif"):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".k.tif.lock", ".other.tif.wsipipe-89abcdef.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tif.wsipipe-89abcdef.tmp"]  # lock file gone
    hold_folder_lock(tmp_path, ".k.tif.lock")  # and released


def test_only_readable_regular_files_pass(tmp_path):
    regular = tmp_path / "slide.svs"
    regular.write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe.svs")
    os.symlink("loop-b.svs", tmp_path / "loop-a.svs")
    os.symlink("loop-a.svs", tmp_path / "loop-b.svs")
    os.symlink("gone.svs", tmp_path / "dangling.svs")
    assert check_regular_file(regular) == regular
    cases = {
        tmp_path / "pipe.svs": "is a named pipe (FIFO), not a regular file",
        tmp_path / "loop-a.svs": "a symbolic link loop",
        tmp_path / "dangling.svs": "no such file (a symbolic link to nothing)",
        tmp_path / "missing.svs": "no such file",
        tmp_path: "is a directory, not a file",
        regular / "inside": "cannot read it (Not a directory)",
        "/dev/null": "is a character device, not a regular file",
    }
    for path, why in cases.items():
        with pytest.raises(SlideOpenError, match=f"^{re.escape(f'{path}: {why}')}$"):
            check_regular_file(path, SlideOpenError)


def test_an_output_folder_is_made_or_refused_in_one_line(tmp_path):
    assert make_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=f"^{blocker}/out: cannot create the output folder \\(Not a directory\\)$"):
        make_output_folder(blocker / "out")


def _old_outputs(outdir):
    (outdir / "labels.zarr" / "0").mkdir(parents=True)
    (outdir / "labels.zarr" / "0" / "chunk").write_text("old")
    (outdir / "nuclei.csv").write_text("old")
    (outdir / "nuclei.json").write_text("old")
    (outdir / "notes.txt").write_text("mine")


def _contents(outdir):
    return {str(p.relative_to(outdir)): p.read_text() for p in sorted(outdir.rglob("*")) if p.is_file()}


def test_staged_outputs_move_in_together_the_last_one_last(tmp_path, monkeypatch):
    _old_outputs(tmp_path)
    moved = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (moved.append(os.path.basename(dst)), replace(src, dst)))
    with staged_outputs(tmp_path, last="nuclei.json") as staging:
        assert staging.parent == tmp_path and staging.is_dir() and not list(staging.iterdir())
        (staging / "nuclei.json").write_text("new")
        (staging / "labels.zarr" / "1").mkdir(parents=True)
        (staging / "labels.zarr" / "1" / "chunk").write_text("new")
        (staging / "nuclei.csv").write_text("new")
    assert _contents(tmp_path) == {
        "labels.zarr/1/chunk": "new",
        "nuclei.csv": "new",
        "nuclei.json": "new",
        "notes.txt": "mine",
    }  # the old folder was replaced, not merged; other files are left alone
    assert [name for name in moved if not name.startswith(".")][-1] == "nuclei.json"
    assert not staging.exists()


def test_staged_outputs_that_fail_leave_the_old_ones_and_no_staging(tmp_path):
    _old_outputs(tmp_path)
    before = _contents(tmp_path)
    with pytest.raises(RuntimeError, match="disk full"), staged_outputs(tmp_path, last="nuclei.json") as staging:
        (staging / "labels.zarr").mkdir()
        (staging / "nuclei.csv").write_text("new")
        raise RuntimeError("disk full")
    assert _contents(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr", "notes.txt", "nuclei.csv", "nuclei.json"]


def test_a_staging_folder_a_killed_run_left_is_a_temporary(tmp_path):
    with staged_outputs(tmp_path) as staging:
        (staging / "nuclei.csv").write_text("half")
        remove_temporaries(tmp_path)  # what the next run's folder_lock does after a kill -9
        assert not staging.exists()
        staging.mkdir()  # an empty staging folder: nothing to move
    assert not list(tmp_path.iterdir())


def test_file_sha256_streams_across_blocks_to_hashlibs_digest(tmp_path):
    path = tmp_path / "data.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # three full 1 MiB blocks and a short one
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_check_output_folder_names_the_parameter_and_the_missing_folder(tmp_path):
    from wsipipe.errors import OutputError
    from wsipipe.files import check_output_folder

    assert check_output_folder(tmp_path / "model.safetensors") == tmp_path / "model.safetensors"
    with pytest.raises(OutputError) as missing:
        check_output_folder(tmp_path / "no" / "model.safetensors")
    assert missing.value.parameter == "output" and missing.value.exit_code == 2
    assert str(missing.value) == f"output {tmp_path}/no/model.safetensors: the folder {tmp_path}/no does not exist"
    with pytest.raises(OutputError, match=r"^/nowhere/x\.xml: the folder /nowhere does not exist$"):
        check_output_folder("/nowhere/x.xml", parameter=None)
