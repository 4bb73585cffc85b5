import pytest

from wsipipe.errors import OutputError
from wsipipe.files import folder_lock


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
