"""The blocking half of placing an image: what one thread hop does, off the event loop.

`write_and_place` is a small image's whole commit (a new temporary file, written, fsynced, linked
into place, the folder fsynced); `sync_and_place` the end of a streamed one's. Both leave either
the image whole under its final name (never through a symlink) or no file at all; the temporary
file is locked (`_tempfiles.claim`) from its creation, so a batch's sweep leaves it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ._info import describe
from ._pngmeta import PngTagger
from ._tempfiles import claim

__all__ = [
    "TEMP_PREFIX",
    "in_thread",
    "new_temp",
    "sync_and_place",
    "temp_name",
    "write_all",
    "write_and_place",
]

log = logging.getLogger("gemimg_async")
T = TypeVar("T")
TEMP_PREFIX = ".gemimg-"


async def in_thread(function: Callable[..., T], /, *args: Any) -> T:
    """`function(*args)` in the loop's default executor: one `run_in_executor` (a fraction of
    `anyio.to_thread`'s cost). A cancellation waits for it to end, then propagates: it owns
    files, and none changes after the call that asked for it is over."""
    future = asyncio.get_running_loop().run_in_executor(None, function, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait((future,))
        raise


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
        except FileExistsError:
            if fallback is None:
                raise
            spare = final.with_stem(f"{final.stem}-{fallback}")
            log.warning("%s exists: saving the paid-for image as %s instead", final, spare.name)
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
