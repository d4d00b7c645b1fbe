"""The blocking half of placing an image: what one thread hop does, off the event loop.

`write_and_place` is a small image's whole commit (a new temporary file, written, fsynced, linked
into place, the folder fsynced); `sync_and_place` the end of a streamed one's. Both leave either
the image whole under its final name (never through a symlink) or no file at all; the temporary
file is locked (`_tempfiles.claim`) from its creation, so a batch's sweep leaves it alone.

Where the system can (Linux: `O_TMPFILE`), a small image's temporary file has no name at all: it
is created in the folder unnamed, written, fsynced and linked to its final name, so there is no
name to pick, lock, check or remove, and nothing is left behind whatever happens, even a crash.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from pathlib import Path
from typing import TypeVar

from ._info import describe
from ._pngmeta import PngTagger
from ._tempfiles import claim

__all__ = [
    "TEMP_PREFIX",
    "new_temp",
    "sync_and_place",
    "temp_name",
    "write_all",
    "write_and_place",
]

log = logging.getLogger("gemimg_async")
T = TypeVar("T")
TEMP_PREFIX = ".gemimg-"


def write_all(fd: int, data: bytes | bytearray) -> None:
    """All of `data` into the file `fd` (a small image, in one or a few system calls)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def temp_name(folder: Path) -> Path:
    """A new temporary name in `folder`: 128 random bits, as a uuid4 has (without making one)."""
    return folder / f"{TEMP_PREFIX}{os.urandom(16).hex()}.part"


_CREATE = (
    os.O_RDWR
    | os.O_CREAT
    | os.O_EXCL  # fails on anything there, a dangling symlink included
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def new_temp(folder: Path) -> tuple[Path, int]:
    """A new temporary file in `folder` (never through a symlink), open and locked (`claim`)
    so that a batch's sweep leaves it alone: its path and descriptor."""
    while True:
        tmp = temp_name(folder)
        fd = os.open(tmp, _CREATE, 0o666)
        try:
            held = claim(fd, tmp)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        if held:
            return tmp, fd
        os.close(fd)  # a sweep took it, and removes it


_TMPFILE = getattr(os, "O_TMPFILE", 0)
_UNNAMED = os.O_RDWR | _TMPFILE | getattr(os, "O_CLOEXEC", 0)
_FOLDER = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NO_UNNAMED = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
"""What opening an unnamed file fails with where the system or filesystem has none."""
_NO_PROC_LINK = (errno.ENOENT, errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP)
"""What linking one through /proc fails with where that cannot be done (no /proc)."""
_unnamed = {"ok": sys.platform == "linux" and _TMPFILE != 0}
"""Whether unnamed files work here: turned off for the process at their first refusal."""


def write_and_place(  # noqa: PLR0917 - positional, for run_in_executor
    folder: Path,
    data: bytes | bytearray,
    final: Path,
    overwrite: bool,
    fallback: str | None,
    tagger: PngTagger | None,
) -> Path:
    """A small image's whole commit in one thread hop: a new temporary file (locked, `claim`),
    `data` written, then `sync_and_place`. On any error the temporary file is gone and `data`
    untouched."""
    if _unnamed["ok"] and not overwrite:
        placed = _write_unnamed(folder, data, final, fallback, tagger)
        if placed is not None:
            return placed
    tmp, fd = new_temp(folder)
    try:
        write_all(fd, data)
        return sync_and_place(fd, tmp, final, overwrite, fallback, tagger)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    finally:
        os.close(fd)


def _write_unnamed(
    folder: Path,
    data: bytes | bytearray,
    final: Path,
    fallback: str | None,
    tagger: PngTagger | None,
) -> Path | None:
    """`write_and_place` with an unnamed temporary file (`O_TMPFILE`); None, with nothing
    written anywhere, where the system cannot do that (the caller then names one)."""
    dir_fd = os.open(folder, _FOLDER)
    try:
        try:
            fd = os.open(".", _UNNAMED, 0o666, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in _NO_UNNAMED:
                raise
            _unnamed["ok"] = False
            return None
        inserted = None if tagger is None else tagger.inserted
        try:
            write_all(fd, data)
            if tagger is not None:
                tagger.untaint(fd)
            os.fsync(fd)
            placed = _link_unnamed(fd, dir_fd, final, fallback)
        finally:
            os.close(fd)  # unlinked, it goes with its last descriptor
        if placed is None:
            if tagger is not None:  # the named file is written from `data` again: untaint it too
                tagger.inserted = inserted
            return None
        if tagger is not None:
            describe(placed, tagger)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return placed


def _link_unnamed(fd: int, dir_fd: int, final: Path, fallback: str | None) -> Path | None:
    """Give the unnamed file `fd` the name `final` (or, when that is taken and a `fallback` is
    given, the spare name), never over an existing file; None when no link can be made here."""
    source = f"/proc/self/fd/{fd}"
    try:
        # linkat(AT_SYMLINK_FOLLOW): a dir_fd makes os.link use it; fails with EEXIST on anything
        os.link(source, final.name, dst_dir_fd=dir_fd, follow_symlinks=True)
    except FileExistsError as taken:
        spare = _spare(final, fallback, taken)
        os.link(source, spare.name, dst_dir_fd=dir_fd, follow_symlinks=True)
        return spare
    except OSError as exc:
        if exc.errno not in _NO_PROC_LINK or (
            exc.errno == errno.ENOENT and Path("/proc/self/fd").is_dir()  # the folder went
        ):
            raise
        _unnamed["ok"] = False
        return None
    return final


def sync_and_place(  # noqa: PLR0917 - positional, for run_in_executor
    fd: int,
    tmp: Path | None,
    final: Path,
    overwrite: bool,
    fallback: str | None,
    tagger: PngTagger | None,
) -> Path:
    """fsync, then give `tmp` its final name atomically (or, when `final` is taken and a
    `fallback` is given, `final` with `-{fallback}` after its stem); a tagged image's chunks
    taken out again if a late caBX turned up, its sidecar written."""
    assert tmp is not None
    if tagger is not None:
        tagger.untaint(fd)
    os.fsync(fd)
    if overwrite:
        tmp.replace(final)  # replaces a symlink at `final`; never writes through it
    else:
        try:
            _place_new(tmp, final)
        except FileExistsError as taken:
            spare = _spare(final, fallback, taken)
            _place_new(tmp, spare)
            final = spare
    if tagger is not None:
        describe(final, tagger)
    dir_fd = os.open(os.path.dirname(final), os.O_RDONLY)  # noqa: PTH120 - no Path made
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def _spare(final: Path, fallback: str | None, taken: FileExistsError) -> Path:
    """`final` with `-{fallback}` after its stem, for an image already paid for whose name was
    `taken`; without a fallback, `taken` is raised."""
    if fallback is None:
        raise taken
    spare = final.with_stem(f"{final.stem}-{fallback}")
    log.warning("%s exists: saving the paid-for image as %s instead", final, spare.name)
    return spare


def _place_new(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`, never over an existing file (even a dangling symlink)."""
    try:
        os.link(tmp, final)  # fails with EEXIST whatever is there
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if os.path.lexists(final):  # a filesystem without hard links: check, then rename
            raise FileExistsError(errno.EEXIST, "file exists", str(final)) from exc
        tmp.replace(final)
    else:
        tmp.unlink()
