"""Where image bytes go: atomic files on disk, or memory, written as the bytes arrive.

A file is written under a hidden temporary name in its target folder, fsynced, and only then
linked to its final name, which it never replaces unless asked; on any error or cancellation the
temporary file is removed. The final name never holds a partial image.

Relay answers are decoded while they stream in (`_answer`), so a 40 MB `b64_json` body costs a
few hundred kilobytes of memory, not three copies of itself.

A file may be given a `PngTagger` (`_pngmeta`): what is written is then the bytes it gives back
(a PNG with its provenance chunks), while the size cap and the checks see the relay's bytes; an
image whose bytes must stay as they came gets a sidecar once placed (`_info.describe`).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import aiofiles.threadpool
import attrs
from aiofiles.threadpool.binary import AsyncFileIO

from ._buffers import joined
from ._commit import TEMP_PREFIX, sync_and_place, temp_name, write_and_place
from ._head import Head, HeadSink, NotAnImageError, TooLargeError, head_field
from ._models import GeneratedImage, check_stem
from ._offload import in_thread
from ._pngmeta import PngTagger
from ._tempfiles import claim

__all__ = [
    "TEMP_PREFIX",
    "WRITE_BLOCK",
    "AtomicFile",
    "Head",
    "ImageSink",
    "MemoryImage",
    "NotAnImageError",
    "TooLargeError",
]


WRITE_BLOCK = 512 * 1024
"""Bytes gathered before a file write: each aiofiles call is a thread hop (~150 us), and each
request in flight holds up to two blocks."""


class ImageSink(Protocol):
    """Takes one image's bytes as they arrive, then becomes a `GeneratedImage` or goes away.

    A sink that cannot write where it should keeps taking the bytes (in memory) and raises the
    OSError at `settle`; `salvage` then gives the whole image back: it was paid for.
    """

    @property
    def size(self) -> int: ...
    async def write(self, data: bytes) -> None: ...
    def check(self) -> None: ...
    def abort(self) -> None: ...
    def salvage(self) -> bytes | None: ...
    async def settle(
        self, index: int, stem: str, *, overwrite: bool, fallback: str | None = None
    ) -> GeneratedImage: ...


@attrs.define
class MemoryImage(HeadSink):
    """An image kept in memory: the bytes themselves, once, and nothing more.

    The buffer grows in place and its bytes become the result without a copy. Given a
    `failure` (a file that could not be created), it stands in for the file and raises that at
    `settle`, having kept the image.
    """

    max_bytes: int
    failure: OSError | None = None
    _head: Head = head_field()
    _first: bytes = b""
    """The bytes while they came in one piece (a small image): kept as they are, no copy."""
    _data: io.BytesIO | None = None
    """The bytes once a second piece came."""

    async def write(self, data: bytes) -> None:
        self._head.take(data)
        if self._data is not None:
            self._data.write(data)
        elif not self._first and type(data) is bytes:
            self._first = data
        else:
            self._data = io.BytesIO(self._first)
            self._data.seek(0, io.SEEK_END)
            self._data.write(data)
            self._first = b""

    def abort(self) -> None:
        self._first, self._data = b"", None

    def salvage(self) -> bytes | None:
        data = self._first if self._data is None else self._data.getvalue()  # no copy
        self.abort()
        return data

    async def settle(
        self, index: int, stem: str, *, overwrite: bool, fallback: str | None = None
    ) -> GeneratedImage:
        del stem, overwrite, fallback  # memory has no names
        if self.failure is not None:
            raise self.failure
        return self._head.image(index, data=self.salvage())


class _GuardedFile(io.FileIO):
    """A file whose close waits for a write in progress in another thread: a cancelled write
    leaves its thread running, and closing under it could hand its descriptor to another file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "xb+")  # O_EXCL: fails on anything there, a symlink included;
        # read too, so an image the disk would not take can be read back (`salvage`)
        self._guard = threading.Lock()

    def write(self, data: Any, /) -> int:
        with self._guard:
            return super().write(data)

    def close(self) -> None:
        with self._guard:
            super().close()


@attrs.define
class AtomicFile(HeadSink):
    """An image written to a temporary file in `folder`, placed under its final name on commit.

    A small image (under `WRITE_BLOCK`) stays in memory until `settle`, which then creates the
    temporary file, writes, fsyncs, links it into place and fsyncs the folder in ONE thread hop
    (`_commit.write_and_place`): the file exists only inside that call, which removes it on any
    error.
    A larger one is streamed: its temporary file is created (a plain system call on the loop,
    so no cancellation falls between creating and owning it) when its first block is written,
    the blocks go through aiofiles, and `settle` fsyncs and places it in one more hop.
    """

    folder: Path
    max_bytes: int
    tagger: PngTagger | None = None
    """Turns the relay's bytes into what is written (provenance chunks in a PNG)."""
    _head: Head = head_field()
    _pending: bytes | bytearray = b""
    """What is not written yet: the first piece itself while it is the only one (no copy)."""
    _tmp: Path | None = None
    _raw: _GuardedFile | None = None
    _file: AsyncFileIO | None = None
    _written: int = 0
    _failure: OSError | None = None
    """Why the file takes no more: the bytes since are kept in `_pending` for `salvage`."""

    @classmethod
    def create(cls, folder: Path, *, max_bytes: int, tagger: PngTagger | None = None) -> AtomicFile:
        """A file to be in `folder`, which must exist (`check_folder` makes it); nothing is
        created until its first block is written, or it is settled."""
        return cls(folder, max_bytes, tagger)

    def _open(self) -> AsyncFileIO:
        """The temporary file of a streamed image, locked (`claim`) until placed: a batch's
        sweep removes only the dead's."""
        if self._file is None:
            while True:
                tmp = temp_name(self.folder)
                raw = _GuardedFile(tmp)
                if claim(raw.fileno(), tmp):
                    break
                raw.close()
            self._tmp, self._raw, self._file = tmp, raw, aiofiles.threadpool.wrap(raw)
        return self._file

    async def write(self, data: bytes) -> None:
        self._head.take(data)
        self._pending = joined(
            self._pending, data if self.tagger is None else self.tagger.feed(data)
        )
        if len(self._pending) >= WRITE_BLOCK and self._failure is None:
            await self._flush()

    async def _flush(self) -> None:
        """Write what is pending; on a disk error, keep it (and what follows) for `salvage`."""
        view = memoryview(self._pending)
        try:
            file = self._open()
            while view:
                done = await file.write(view)
                self._written += done
                view = view[done:]
        except OSError as exc:
            self._failure = exc
            self._pending = bytearray(view)
        else:
            self._pending = bytearray()
        # no view.release(): a write cancelled mid-way may still hold it in its thread

    async def settle(
        self, index: int, stem: str, *, overwrite: bool, fallback: str | None = None
    ) -> GeneratedImage:
        """Place the image at `{folder}/{stem}_{index}.{ext}`, the extension from its bytes.

        An existing file there is replaced only with `overwrite`; otherwise FileExistsError, or,
        given a `fallback`, the name `{stem}_{index}-{fallback}.{ext}` (for an image already paid
        for, which must not be lost to a name taken meanwhile).
        """
        try:
            info = self._head.info()
            final = self.folder / f"{check_stem(stem)}_{index}.{info.extension}"
            tagger = self.tagger
            if tagger is not None:
                self._pending = joined(self._pending, tagger.close())
                if tagger.width is None:  # not a PNG: the sidecar takes the sniffed size
                    tagger.width, tagger.height = info.width, info.height
            if self._raw is not None and self._pending and self._failure is None:
                await self._flush()
        except BaseException:
            self.abort()
            raise
        if self._failure is not None:  # the temporary file stays for `salvage`
            raise self._failure
        try:
            if self._raw is None:  # all in memory: one hop does everything
                if tagger is not None and tagger.tainted and tagger.inserted is not None:
                    self._pending = bytearray(tagger.original(bytes(self._pending)))
                    tagger.inserted = None  # a late caBX: the relay's bytes exactly
                path = await in_thread(
                    write_and_place, self.folder, self._pending, final, overwrite, fallback, tagger
                )
            else:
                path = await in_thread(
                    sync_and_place,
                    self._raw.fileno(),
                    self._tmp,
                    final,
                    overwrite,
                    fallback,
                    tagger,
                )
        except OSError:
            raise  # the bytes stay for `salvage`: the caller salvages or aborts
        except BaseException:
            self.abort()
            raise
        self.abort()  # closes the file; the temporary name went with the placing
        return self._head.image(index, path=path, byte_size=self.size_on_disk)

    @property
    def size_on_disk(self) -> int:
        """The image's bytes and the chunks the tagger put in (and left in)."""
        return self._head.size + (0 if self.tagger is None else self.tagger.added)

    def salvage(self) -> bytes | None:
        """The whole image, read back from the temporary file and what it did not take; None
        when the file cannot be read. The temporary file goes either way."""
        try:
            data = bytes(self._pending)
            if self._raw is not None:
                data = os.pread(self._raw.fileno(), self._written, 0) + data
            if self.tagger is not None:  # kept in memory: the relay's bytes, as memory keeps
                data = self.tagger.original(data)
        except (OSError, ValueError):
            return None
        else:
            return data
        finally:
            self.abort()

    def abort(self) -> None:
        self._pending = bytearray()
        raw, tmp, self._raw, self._file = self._raw, self._tmp, None, None
        if raw is None or tmp is None:
            return
        try:
            raw.close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
