"""`_commit`: a small image's whole commit in one call, leaving it whole under its name or
nothing at all."""

import errno
import os
import sys

import pytest

from gemimg_async import _commit
from gemimg_async._commit import TEMP_PREFIX, write_and_place

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="O_TMPFILE is Linux's")
DATA = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


@pytest.fixture(autouse=True)
def unnamed(monkeypatch):
    """Each test starts where unnamed files are believed to work (the process-wide verdict)."""
    state = {"ok": _commit._unnamed["ok"]}
    monkeypatch.setattr(_commit, "_unnamed", state)
    return state


def names(folder):
    return sorted(path.name for path in folder.iterdir())


def never(*args):
    raise AssertionError("a named temporary file was made")


@linux_only
def test_a_small_image_takes_its_name_without_a_named_temporary_file(tmp_path, monkeypatch):
    """On Linux the image is written to an unnamed file and linked into place: no temporary
    name is ever made, and the folder holds the image alone, byte for byte."""
    monkeypatch.setattr(_commit, "new_temp", never)
    final = tmp_path / "fox_0.png"
    assert write_and_place(tmp_path, DATA, final, False, None, None) == final
    assert final.read_bytes() == DATA
    assert names(tmp_path) == ["fox_0.png"]


@linux_only
def test_a_taken_name_gives_the_paid_image_its_spare_name(tmp_path, monkeypatch):
    """When the final name is taken and a fallback is given, the image lands under
    `{stem}-{fallback}` and the file there is untouched."""
    monkeypatch.setattr(_commit, "new_temp", never)
    (tmp_path / "fox_0.png").write_bytes(b"older")
    placed = write_and_place(tmp_path, DATA, tmp_path / "fox_0.png", False, "k1", None)
    assert placed == tmp_path / "fox_0-k1.png"
    assert placed.read_bytes() == DATA
    assert (tmp_path / "fox_0.png").read_bytes() == b"older"


@pytest.mark.parametrize("taken_by", ["file", "symlink", "dangling symlink"])
def test_a_taken_name_without_a_fallback_raises_and_leaves_nothing(tmp_path, taken_by):
    """FileExistsError, whatever holds the name (a symlink is never written through), and the
    folder is as it was: no temporary file, nothing at the symlink's target."""
    final, target = tmp_path / "fox_0.png", tmp_path / "target.png"
    if taken_by == "file":
        final.write_bytes(b"older")
    else:
        if taken_by == "symlink":
            target.write_bytes(b"target")
        final.symlink_to(target)
    before = names(tmp_path)
    with pytest.raises(FileExistsError):
        write_and_place(tmp_path, DATA, final, False, None, None)
    assert names(tmp_path) == before
    assert taken_by != "symlink" or target.read_bytes() == b"target"


@linux_only
def test_where_unnamed_files_are_refused_a_named_one_is_used(tmp_path, monkeypatch, unnamed):
    """A filesystem without O_TMPFILE (EOPNOTSUPP): the image is placed through a named
    temporary file, which is gone afterwards, and the process stops trying unnamed ones."""
    assert unnamed["ok"]
    real_open = os.open

    def no_tmpfile(path, flags, *args, **kwargs):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_tmpfile)
    final = tmp_path / "fox_0.png"
    assert write_and_place(tmp_path, DATA, final, False, None, None) == final
    assert final.read_bytes() == DATA
    assert names(tmp_path) == ["fox_0.png"]
    assert unnamed["ok"] is False


@pytest.fixture
def no_proc_links(monkeypatch):
    """Linking through /proc/self/fd is refused (EXDEV), as where /proc is another mount."""
    real_link = os.link

    def no_proc(source, *args, **kwargs):
        if str(source).startswith("/proc/"):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real_link(source, *args, **kwargs)

    monkeypatch.setattr(os, "link", no_proc)


@linux_only
@pytest.mark.usefixtures("no_proc_links")
def test_where_proc_cannot_link_a_named_one_is_used(tmp_path, unnamed):
    """Linking through /proc/self/fd refused (EXDEV): the unnamed file is dropped, the image is
    placed through a named temporary file, and nothing else is left."""
    assert unnamed["ok"]
    final = tmp_path / "fox_0.png"
    assert write_and_place(tmp_path, DATA, final, False, None, None) == final
    assert final.read_bytes() == DATA
    assert names(tmp_path) == ["fox_0.png"]
    assert unnamed["ok"] is False


def test_a_failing_fsync_leaves_no_file_and_the_data_untouched(tmp_path, monkeypatch):
    """An fsync that fails: OSError, no file under any name (final or temporary), and the
    bytes handed in are as they were (the caller salvages them)."""

    def fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", fsync)
    data = bytearray(DATA)
    with pytest.raises(OSError, match="Input/output"):
        write_and_place(tmp_path, data, tmp_path / "fox_0.png", False, None, None)
    assert names(tmp_path) == []
    assert data == DATA


def test_overwrite_replaces_the_file_there(tmp_path):
    """With overwrite, an existing file at the name is replaced whole; no temporary file stays."""
    final = tmp_path / "fox_0.png"
    final.write_bytes(b"older")
    assert write_and_place(tmp_path, DATA, final, True, None, None) == final
    assert final.read_bytes() == DATA
    assert not [name for name in names(tmp_path) if name.startswith(TEMP_PREFIX)]


@linux_only
@pytest.mark.usefixtures("no_proc_links")
def test_a_late_c2pa_image_keeps_its_bytes_when_the_unnamed_file_cannot_be_linked(
    tmp_path, unnamed
):
    """A tagged PNG whose caBX came after its data (the inserted chunks must come out again):
    when the unnamed file cannot be linked and a named one is written instead, that one is
    untainted too: the relay's bytes exactly, with a sidecar."""
    from test_pngmeta import SIGNED_LATE, tag  # noqa: PLC0415

    assert unnamed["ok"]
    tagged, tagger = tag(SIGNED_LATE, [50, 7])
    assert tagger.tainted
    final = tmp_path / "late_0.png"
    assert write_and_place(tmp_path, tagged, final, False, None, tagger) == final
    assert final.read_bytes() == SIGNED_LATE
    assert names(tmp_path) == ["late_0.png", "late_0.png.json"]
