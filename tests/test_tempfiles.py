"""Temporary image files (`_tempfiles`): a writer holds its file, so a sweep removes only those
of dead processes, and a writer whose new file was swept before it held it knows."""

import os

from gemimg_async._tempfiles import claim, remove_if_abandoned


def test_a_held_file_stays_and_a_let_go_one_is_removed(tmp_path):
    """A file its writer claimed is not removed; once the writer closes it (or dies), it is."""
    path = tmp_path / ".gemimg-x.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        assert claim(fd, path)
        assert remove_if_abandoned(path) is False
        assert path.exists()
    finally:
        os.close(fd)
    assert remove_if_abandoned(path) is True
    assert not path.exists()


def test_a_file_swept_before_its_writer_held_it_is_not_claimed(tmp_path):
    """Between creating its file and locking it, a writer can lose it to a sweep: claim then
    says so, and the writer makes another rather than write to a file with no name."""
    path = tmp_path / ".gemimg-y.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        assert remove_if_abandoned(path) is True
        assert not claim(fd, path)
    finally:
        os.close(fd)


def test_a_symlink_is_not_followed(tmp_path):
    """A symlink planted under a temporary name is never opened through: no verdict, and what
    it points to stays."""
    target = tmp_path / "precious"
    target.write_bytes(b"keep")
    link = tmp_path / ".gemimg-z.part"
    link.symlink_to(target)
    assert remove_if_abandoned(link) is None
    assert target.read_bytes() == b"keep"
