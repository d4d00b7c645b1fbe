"""Output folders (`_folders`): refused before anything is paid for when they cannot take images."""

import pytest

from gemimg_async import InvalidDestinationError
from gemimg_async._folders import check_folder
from hostile.support import unwritable_folder


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "notes.txt", "is a file, not a folder"),
        (lambda tmp: tmp / "notes.txt" / "images", "notes.txt is a file"),
        (unwritable_folder, "cannot create files in"),
    ],
    ids=["a-file", "under-a-file", "unwritable"],
)
def test_a_folder_that_cannot_take_images_is_refused(tmp_path, make, message):
    """check_folder refuses a file, a path under a file and a folder that takes no new file,
    with InvalidDestinationError naming it by the name given (`--out`)."""
    (tmp_path / "notes.txt").write_text("not a folder\n")
    with pytest.raises(InvalidDestinationError, match=message) as caught:
        check_folder(make(tmp_path), what="--out")
    assert str(caught.value).count("--out") == 1
    assert (tmp_path / "notes.txt").read_text() == "not a folder\n"


def test_a_folder_that_takes_files_is_made_and_left_clean(tmp_path):
    """check_folder makes a missing folder and leaves nothing of its probe in it."""
    check_folder(tmp_path / "a" / "b")
    assert list((tmp_path / "a" / "b").iterdir()) == []


def test_a_batch_probe_needs_room_for_an_image(tmp_path):
    """With probe_bytes, the folder must take that much: the probe leaves nothing behind."""
    check_folder(tmp_path / "out", probe_bytes=64 * 1024)
    assert list((tmp_path / "out").iterdir()) == []
