"""Where a batch's output goes: a folder, or object storage (`s3://bucket/prefix`, any fsspec URL).

A `Store` is what a batch writes through::

    upload = await store.open_image("cat_0.png")   # an image, streamed as it arrives
    await upload.write(chunk)                      # ... in bounded memory
    await upload.commit()                          # only now is it under its name
    # or: await upload.abort()                     # and nothing is

    await store.append("manifest.2-of-4.jsonl", line)   # whole lines, durable when it returns
    await store.read_log("manifest.2-of-4.jsonl")       # every line appended, in order
    await store.logs()                                  # the logs there
    await store.images()                                # the images there

A name under its final key is always a whole image: `LocalStore` writes a temporary file and
renames it; `FsspecStore` (`_objstore`) lets object storage complete an upload in one step.

`_objstore.open_store(out)` picks the kind: a path or `file://` URL is a folder, any other URL
an object store (the optional extra `s3`: fsspec and s3fs).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread
import attrs

from ._commit import new_temp, sync_and_place, write_all
from ._folders import BATCH_PROBE_BYTES, check_folder
from ._outdir import image_key

__all__ = [
    "UPLOAD_HOP",
    "ImageUpload",
    "LocalStore",
    "Store",
    "check_image_name",
    "check_log_name",
]

UPLOAD_HOP = 1024 * 1024
"""Bytes gathered before a write is handed to a worker thread: one hop (~150 us) per MiB."""
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_LOG_NAME = re.compile(r"\.?[A-Za-z0-9][A-Za-z0-9._-]*\.jsonl")


class ImageUpload(Protocol):
    """One image on its way to its name: `write` its bytes, then `commit` or `abort`."""

    @property
    def name(self) -> str | None:
        """The name given at open; None until `commit` names it."""

    @property
    def size(self) -> int:
        """Bytes written so far."""

    async def write(self, data: bytes) -> None: ...
    async def commit(self, name: str | None = None) -> str:
        """Put the whole image under `name` (or the name it was opened with), replacing what
        was there; returns the name."""

    async def abort(self) -> None:
        """Drop what was written: nothing appears under the name. Safe to call twice."""


class Store(Protocol):
    """A batch's output: images by name, and append-only logs of JSON lines."""

    @property
    def url(self) -> str:
        """Where it is, for messages (never with credentials)."""

    async def open_image(self, name: str | None = None) -> ImageUpload:
        """An upload of one image, to be named now or at `commit`."""

    async def append(self, log: str, data: bytes) -> None:
        """Append whole lines (`data` ends with a newline) to `log`, durably."""

    async def read_log(self, log: str) -> bytes:
        """Every line appended to `log` and not cleared, in order; empty when there is none."""

    async def clear_log(self, log: str) -> None: ...
    async def compact(self, log: str) -> int:
        """Fold `log` into as few pieces as its storage allows (its writer only); returns how
        many pieces went."""

    async def check(self) -> None:
        """InvalidDestinationError, before anything is paid for, where no image can be written."""

    async def logs(self) -> list[str]:
        """The names of the logs present, sorted."""

    async def images(self) -> list[str]:
        """The names of the images present (`{id}_{i}.{ext}`), sorted."""

    async def aclose(self) -> None: ...


def check_log_name(name: str) -> str:
    """`name` if it can name a log (`manifest.2-of-4.jsonl`, `.manifest-sent.jsonl`), else
    ValueError: one plain file name ending `.jsonl`, no folder in it."""
    if not _LOG_NAME.fullmatch(name):
        raise ValueError(f"a log is named like manifest.jsonl, not {name!r}")
    return name


def check_image_name(name: str) -> str:
    """`name` if it can name an image in a store (one plain name), else ValueError."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise ValueError(f"an image is named like cat_0.png, with no folder in it, not {name!r}")
    return name


@attrs.define
class _LocalUpload:
    """An image written to a locked temporary file in its folder, renamed into place."""

    folder: Path
    name: str | None
    _tmp: Path
    _fd: int
    _pending: bytearray = attrs.field(factory=bytearray)
    size: int = 0
    done: bool = False

    async def write(self, data: bytes) -> None:
        if self.done:
            raise ValueError(f"the upload of {self.name or 'an image'} is over")
        self._pending += data
        self.size += len(data)
        if len(self._pending) >= UPLOAD_HOP:
            block, self._pending = self._pending, bytearray()
            await anyio.to_thread.run_sync(write_all, self._fd, block)

    async def commit(self, name: str | None = None) -> str:
        if self.done:
            raise ValueError(f"the upload of {self.name or 'an image'} is over")
        final = name or self.name
        if final is None:
            raise ValueError("an upload opened without a name takes one at commit")
        check_image_name(final)
        try:
            block, self._pending = self._pending, bytearray()
            await anyio.to_thread.run_sync(_place, self._fd, block, self._tmp, self.folder / final)
        except BaseException:
            await self.abort()
            raise
        self.done = True
        os.close(self._fd)
        return final

    async def abort(self) -> None:
        if not self.done:
            self.done = True
            os.close(self._fd)
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()


def _place(fd: int, block: bytearray, tmp: Path, final: Path) -> None:
    write_all(fd, block)
    sync_and_place(fd, tmp, final, True, None, None)  # replaces, never writes through a symlink


@attrs.define
class LocalStore:
    """A folder as a `Store`: images renamed into place, logs as append-only files. The batch
    of a local folder keeps its own writer (`_journal`, `_sinks`); this one is for reading
    (`gemimg-async status`) and as the object store's stand-in in tests."""

    folder: Path

    @property
    def url(self) -> str:
        return str(self.folder)

    async def open_image(self, name: str | None = None) -> _LocalUpload:
        if name is not None:
            check_image_name(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp, fd = new_temp(self.folder)
        return _LocalUpload(self.folder, name, tmp, fd)

    async def append(self, log: str, data: bytes) -> None:
        _check_lines(data)
        path = self.folder / check_log_name(log)
        self.folder.mkdir(parents=True, exist_ok=True)
        await anyio.to_thread.run_sync(_append, path, data)

    async def read_log(self, log: str) -> bytes:
        try:
            return (self.folder / check_log_name(log)).read_bytes()
        except FileNotFoundError:
            return b""

    async def clear_log(self, log: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / check_log_name(log)).unlink()

    async def compact(self, log: str) -> int:
        del log  # a file is one piece already
        return 0

    async def check(self) -> None:
        check_folder(self.folder, what="the output folder", probe_bytes=BATCH_PROBE_BYTES)

    async def logs(self) -> list[str]:
        return sorted(
            _names(self.folder, lambda e: e.is_file() and bool(_LOG_NAME.fullmatch(e.name)))
        )

    async def images(self) -> list[str]:
        return sorted(
            _names(
                self.folder,
                lambda e: e.is_file(follow_symlinks=False) and image_key(e.name) is not None,
            )
        )

    async def aclose(self) -> None:
        pass


def _names(folder: Path, keep: Callable[[os.DirEntry[str]], bool]) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return [entry.name for entry in entries if keep(entry)]
    except FileNotFoundError:
        return []


def _check_lines(data: bytes) -> None:
    if not data.endswith(b"\n"):
        raise ValueError("a log takes whole lines: the data must end with a newline")


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NOFOLLOW, 0o644)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, f"wrote part of a line to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)
