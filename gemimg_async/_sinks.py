"""Where image bytes go: atomic files on disk, or memory, written as the bytes arrive.

A file is written under a hidden temporary name in its target folder, fsynced, and only then
linked to its final name, which it never replaces unless asked; on any error or cancellation the
temporary file is removed. The final name never holds a partial image.

Relay answers are decoded while they stream in (`_answer`), so a 40 MB `b64_json` body costs a
few hundred kilobytes of memory, not three copies of itself.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Protocol

import aiofiles.threadpool
import anyio
import attrs
from aiofiles.threadpool.binary import AsyncFileIO

from ._media import SNIFF_BYTES, MediaInfo, sniff
from ._models import GeneratedImage, check_stem
from ._tempfiles import claim

__all__ = [
    "TEMP_PREFIX",
    "WRITE_BLOCK",
    "AtomicFile",
    "ImageSink",
    "MemoryImage",
    "NotAnImageError",
    "TooLargeError",
]

log = logging.getLogger("gemimg_async")

WRITE_BLOCK = 512 * 1024
"""Bytes gathered before a file write: each aiofiles call is a thread hop (~150 us), and each
request in flight holds up to two blocks."""
TEMP_PREFIX = ".gemimg-"
_PNG_END = b"IEND\xaeB`\x82"


class NotAnImageError(ValueError):
    """The bytes are not a PNG, JPEG, WEBP or GIF image."""


class TooLargeError(ValueError):
    """More bytes than the image size cap."""


class ImageSink(Protocol):
    """Takes one image's bytes as they arrive, then becomes a `GeneratedImage` or goes away."""

    @property
    def size(self) -> int: ...
    async def write(self, data: bytes) -> None: ...
    def check(self) -> None: ...
    def abort(self) -> None: ...
    async def settle(
        self, index: int, stem: str, *, overwrite: bool, fallback: str | None = None
    ) -> GeneratedImage: ...


@attrs.define
class _Head:
    """The first and last bytes of an image: enough to check it is one, and whole, and to read
    its size."""

    max_bytes: int
    size: int = 0
    _head: bytearray = attrs.Factory(bytearray)
    _tail: bytes = b""
    _sniffed: bool = False

    def take(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise TooLargeError(f"the image is larger than the {self.max_bytes}-byte cap")
        self._tail = (self._tail + data[-len(_PNG_END) :])[-len(_PNG_END) :]
        if len(self._head) < SNIFF_BYTES:
            self._head += data[: SNIFF_BYTES - len(self._head)]
            if not self._sniffed and len(self._head) >= 16:  # noqa: PLR2004 - every magic fits
                self._sniffed = True
                if sniff(bytes(self._head)) is None:
                    raise NotAnImageError(_describe_non_image(bytes(self._head)))

    def info(self) -> MediaInfo:
        """What the image is; NotAnImageError when it is none, or a PNG cut short."""
        info = sniff(bytes(self._head))
        if info is None:
            raise NotAnImageError(_describe_non_image(bytes(self._head)))
        if info.extension == "png" and self._tail != _PNG_END:
            raise NotAnImageError(f"the PNG is cut short after {self.size} bytes (no IEND chunk)")
        return info

    def image(self, index: int, **where: Any) -> GeneratedImage:
        info = self.info()
        return GeneratedImage(
            index,
            media_type=info.media_type,
            width=info.width,
            height=info.height,
            byte_size=self.size,
            **where,
        )


def _describe_non_image(head: bytes) -> str:
    text = head[:64].decode("utf-8", "replace").strip()
    kind = "an HTML page" if text.lstrip().startswith("<") else f"{len(head)} bytes"
    return f"expected a PNG, JPEG, WEBP or GIF image, got {kind} starting {text[:40]!r}"


@attrs.define
class MemoryImage:
    """An image kept in memory: the bytes themselves, once, and nothing more."""

    max_bytes: int
    _head: _Head = attrs.field(init=False)
    _data: bytearray = attrs.Factory(bytearray)

    def __attrs_post_init__(self) -> None:
        self._head = _Head(self.max_bytes)

    @property
    def size(self) -> int:
        return self._head.size

    def check(self) -> None:
        """NotAnImageError unless the bytes so far are a whole image."""
        self._head.info()

    async def write(self, data: bytes) -> None:
        self._head.take(data)
        self._data += data

    def abort(self) -> None:
        self._data = bytearray()

    async def settle(
        self, index: int, stem: str, *, overwrite: bool, fallback: str | None = None
    ) -> GeneratedImage:
        del stem, overwrite, fallback  # memory has no names
        return self._head.image(index, data=bytes(self._data))


class _GuardedFile(io.FileIO):
    """A file whose close waits for a write in progress in another thread: a cancelled write
    leaves its thread running, and closing under it could hand its descriptor to another file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "xb")  # O_EXCL: fails on anything there, a symlink included
        self._guard = threading.Lock()

    def write(self, data: Any, /) -> int:
        with self._guard:
            return super().write(data)

    def close(self) -> None:
        with self._guard:
            super().close()


@attrs.define
class AtomicFile:
    """An image streamed to a temporary file in `folder`, placed under its final name on commit.

    Creating and removing the temporary file are plain system calls on the loop (microseconds),
    so no cancellation can fall between them and leave a file nobody owns; the writes go through
    aiofiles in blocks.
    """

    folder: Path
    max_bytes: int
    _tmp: Path
    _raw: _GuardedFile
    _file: AsyncFileIO
    _head: _Head = attrs.field(init=False)
    _pending: bytearray = attrs.Factory(bytearray)

    def __attrs_post_init__(self) -> None:
        self._head = _Head(self.max_bytes)

    @classmethod
    def create(cls, folder: Path, *, max_bytes: int) -> AtomicFile:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}.part"
            raw = _GuardedFile(tmp)
            if claim(raw.fileno(), tmp):  # held until placed: sweeps remove only the dead's
                break
            raw.close()
        return cls(folder, max_bytes, tmp, raw, aiofiles.threadpool.wrap(raw))

    @property
    def size(self) -> int:
        return self._head.size

    def check(self) -> None:
        """NotAnImageError unless the bytes so far are a whole image."""
        self._head.info()

    async def write(self, data: bytes) -> None:
        self._head.take(data)
        self._pending += data
        if len(self._pending) >= WRITE_BLOCK:
            block, self._pending = self._pending, bytearray()
            await self._write(block)

    async def _write(self, block: bytearray) -> None:
        view = memoryview(block)
        while view:
            view = view[await self._file.write(view) :]

    async def settle(
        self, index: int, stem: str, *, overwrite: bool, fallback: str | None = None
    ) -> GeneratedImage:
        """Place the image at `{folder}/{stem}_{index}.{ext}`, the extension from its bytes.

        An existing file there is replaced only with `overwrite`; otherwise FileExistsError, or,
        given a `fallback`, the name `{stem}_{index}-{fallback}.{ext}` (for an image already paid
        for, which must not be lost to a name taken meanwhile).
        """
        try:
            extension = self._head.info().extension
            final = self.folder / f"{check_stem(stem)}_{index}.{extension}"
            if self._pending:
                await self._write(self._pending)
                self._pending = bytearray()
            spare = None if fallback is None else final.with_stem(f"{final.stem}-{fallback}")
            path = await anyio.to_thread.run_sync(
                _sync_and_place, self._raw.fileno(), self._tmp, final, overwrite, spare
            )
        finally:
            self.abort()  # closes the file; removes the temporary name unless it was placed
        return self._head.image(index, path=path)

    def abort(self) -> None:
        try:
            self._raw.close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()


def _sync_and_place(fd: int, tmp: Path, final: Path, overwrite: bool, spare: Path | None) -> Path:
    """fsync, then give `tmp` its final name atomically (or `spare`, when `final` is taken)."""
    os.fsync(fd)
    if overwrite:
        tmp.replace(final)  # replaces a symlink at `final`; never writes through it
    else:
        try:
            _place_new(tmp, final)
        except FileExistsError:
            if spare is None:
                raise
            log.warning("%s exists: saving the paid-for image as %s instead", final, spare.name)
            _place_new(tmp, spare)
            final = spare
    dir_fd = os.open(final.parent, os.O_RDONLY)
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
