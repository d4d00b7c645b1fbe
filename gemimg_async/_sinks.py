"""Where image bytes go: atomic files on disk, or memory, written as the bytes arrive.

A file is written under a hidden temporary name in its target folder, flushed, fsynced, and only
then linked to its final name, which it never overwrites unless asked; on any error or
cancellation the temporary file is removed. The final name never holds a partial image.

Relay answers are decoded while they stream in (`_jsonstream`), so a 40 MB `b64_json` body costs
a few hundred kilobytes of memory, not three copies of itself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import aiofiles
import aiofiles.os
import anyio
import attrs
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from ._jsonstream import Diverted, ImageStreamParser, JSONStreamError
from ._media import SNIFF_BYTES, MediaInfo, sniff
from ._models import check_stem

__all__ = [
    "TEMP_PREFIX",
    "WRITE_BLOCK",
    "AtomicFile",
    "BodyImage",
    "ImageSink",
    "MemoryImage",
    "NotAnImageError",
    "TooLargeError",
    "receive_body",
]

WRITE_BLOCK = 1024 * 1024
"""Bytes gathered before a file write: each aiofiles call is a thread hop, so hop per megabyte."""
TEMP_PREFIX = ".gemimg-"
_PNG_END = b"IEND\xaeB`\x82"


class NotAnImageError(ValueError):
    """The bytes are not a PNG, JPEG, WEBP or GIF image."""


class TooLargeError(ValueError):
    """More bytes than the image size cap."""


class ImageSink(Protocol):
    """Takes one image's bytes as they arrive."""

    @property
    def size(self) -> int: ...
    async def write(self, data: bytes) -> None: ...
    async def abort(self) -> None: ...
    @property
    def info(self) -> MediaInfo: ...


@attrs.define
class _Head:
    """The first bytes of an image: enough to check it is one, and to read its size."""

    max_bytes: int
    size: int = 0
    _head: bytearray = attrs.Factory(bytearray)
    _tail: bytes = b""
    _info: MediaInfo | None = None

    def take(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise TooLargeError(f"the image is larger than the {self.max_bytes}-byte cap")
        self._tail = (self._tail + data[-len(_PNG_END) :])[-len(_PNG_END) :]
        if len(self._head) < SNIFF_BYTES:
            self._head += data[: SNIFF_BYTES - len(self._head)]
            if self._info is None and len(self._head) >= 16:  # noqa: PLR2004
                self._info = sniff(bytes(self._head))
                if self._info is None:
                    raise NotAnImageError(_describe_non_image(bytes(self._head)))

    @property
    def info(self) -> MediaInfo:
        """What the image is; NotAnImageError when it is none, or a PNG cut short."""
        info = sniff(bytes(self._head))
        if info is None:
            raise NotAnImageError(_describe_non_image(bytes(self._head)))
        if info.extension == "png" and self._tail != _PNG_END:
            raise NotAnImageError(f"the PNG is cut short after {self.size} bytes (no IEND chunk)")
        return info


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

    @property
    def info(self) -> MediaInfo:
        return self._head.info

    async def write(self, data: bytes) -> None:
        self._head.take(data)
        self._data += data

    async def abort(self) -> None:
        self._data = bytearray()

    def getvalue(self) -> bytes:
        return bytes(self._data)


@attrs.define
class AtomicFile:
    """An image streamed to a temporary file in `folder`, placed under its final name on commit."""

    folder: Path
    max_bytes: int
    _tmp: Path
    _file: AsyncBufferedIOBase
    _head: _Head = attrs.field(init=False)
    _pending: bytearray = attrs.Factory(bytearray)

    def __attrs_post_init__(self) -> None:
        self._head = _Head(self.max_bytes)

    @classmethod
    async def create(cls, folder: Path, *, max_bytes: int) -> AtomicFile:
        await aiofiles.os.makedirs(folder, exist_ok=True)
        tmp = folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}.part"
        return cls(folder, max_bytes, tmp, await aiofiles.open(tmp, "xb"))

    @property
    def size(self) -> int:
        return self._head.size

    @property
    def info(self) -> MediaInfo:
        return self._head.info

    async def write(self, data: bytes) -> None:
        self._head.take(data)
        self._pending += data
        if len(self._pending) >= WRITE_BLOCK:
            block, self._pending = self._pending, bytearray()
            await self._file.write(block)

    async def commit(self, stem: str, index: int, *, overwrite: bool) -> Path:
        """Place the image at `{folder}/{stem}_{index}.{ext}`, never over an existing file unless
        `overwrite`; the extension comes from the bytes. Returns the final path."""
        try:
            final = self.folder / f"{check_stem(stem)}_{index}.{self.info.extension}"
            if self._pending:
                await self._file.write(self._pending)
                self._pending = bytearray()
            await self._file.flush()
            fd = self._file.fileno()
            await anyio.to_thread.run_sync(_sync_and_place, fd, self._tmp, final, overwrite)
            await self._file.close()
        except BaseException:
            await self.abort()
            raise
        return final

    async def abort(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._file.close()
            with contextlib.suppress(FileNotFoundError):
                await aiofiles.os.unlink(self._tmp)


def _sync_and_place(fd: int, tmp: Path, final: Path, overwrite: bool) -> None:
    """fsync, then give `tmp` its final name atomically; the temp name then goes away."""
    os.fsync(fd)
    if overwrite:
        tmp.replace(final)  # replaces a symlink at `final`; never writes through it
    else:
        try:
            os.link(tmp, final)  # fails if `final` exists, even as a dangling symlink
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if os.path.lexists(final):  # a filesystem without hard links: check, then rename
                raise FileExistsError(errno.EEXIST, "file exists", str(final)) from exc
            tmp.replace(final)
        else:
            tmp.unlink()
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@attrs.frozen
class BodyImage:
    """One image found in a relay answer: its sink (inline bytes) or its URL."""

    index: int
    sink: ImageSink | None = None
    url: str | None = None


async def receive_body(
    chunks: AsyncIterator[bytes], open_sink: Callable[[], Awaitable[ImageSink]]
) -> tuple[Any, list[BodyImage]]:
    """Read a relay answer, streaming every inline image into a sink from `open_sink`.

    Returns the document (image strings replaced by `Diverted`) and the images it holds, in
    order. Raises JSONStreamError when the body is not JSON, NotAnImageError when an image string
    holds no image (or a PNG cut short). On any error the sinks are aborted.
    """
    parser = ImageStreamParser()
    sinks: dict[tuple[int, str], ImageSink] = {}
    images: list[BodyImage] = []
    try:
        async for chunk in chunks:
            for index, key, data in parser.feed(chunk):
                sink = sinks.get((index, key))
                if sink is None:
                    sink = sinks[index, key] = await open_sink()
                await sink.write(data)
        doc = parser.close()
        async for image in _images_in(doc, sinks, open_sink):
            images.append(image)
            if image.sink is not None:
                image.sink.info  # noqa: B018 - raises NotAnImageError for what is no image
    except BaseException:
        await _abort_all([*sinks.values(), *(image.sink for image in images)])
        raise
    used = {id(image.sink) for image in images}
    await _abort_all([sink for sink in sinks.values() if id(sink) not in used])
    return doc, images


async def _abort_all(sinks: list[ImageSink | None]) -> None:
    seen: set[int] = set()
    for sink in sinks:
        if sink is not None and id(sink) not in seen:
            seen.add(id(sink))
            await sink.abort()


async def _images_in(
    doc: Any,
    sinks: Mapping[tuple[int, str], ImageSink],
    open_sink: Callable[[], Awaitable[ImageSink]],
) -> AsyncIterator[BodyImage]:
    """The images of `doc["data"]`, whichever field of each item holds one."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if isinstance(data, dict):
        data = [data]  # a relay that answers one image as an object
    if not isinstance(data, list):
        return
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            continue
        sink = next(
            (
                sinks[value.index, value.key]
                for key in ("b64_json", "url")
                if isinstance(value := item.get(key), Diverted) and value.size
            ),
            None,
        )
        if sink is not None:
            yield BodyImage(index, sink=sink)
            continue
        url = item.get("url")
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            yield BodyImage(index, url=url)
            continue
        inline = next(
            (v for k in ("b64_json", "url") if isinstance(v := item.get(k), str) and v), None
        )
        if inline is not None:  # the full-parse fallback: an image where streaming did not look
            sink = await open_sink()
            try:
                await sink.write(await anyio.to_thread.run_sync(_decode_inline, inline))
            except BaseException:
                await sink.abort()
                raise
            yield BodyImage(index, sink=sink)


def _decode_inline(value: str) -> bytes:
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value)
    except (binascii.Error, ValueError) as exc:
        raise JSONStreamError(f"an image string is not base64: {exc}") from exc
