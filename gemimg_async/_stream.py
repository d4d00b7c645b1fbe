"""`Client.stream`: one image handed on as bytes, in bounded memory, for a web backend to send on.

The answer is read first (its images spooled to unnamed temporary files): only then is it known
which image is the final one and not one of the model's drafts. The final image is read back in
blocks; a URL image is downloaded block by block instead. Leaving the block early, or a
cancelled caller (a client that hung up), cancels the generation: the relay sees its
connection drop, and nothing is left on disk.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from types import TracebackType
from typing import IO

import anyio
import attrs

from ._config import USE_CLIENT_DEFAULT, UseClientDefault
from ._exceptions import InvalidCountError
from ._generation import Engine
from ._head import Head, HeadSink, head_field
from ._media import SNIFF_BYTES, sniff
from ._models import GeneratedImage, ImageRequest
from ._results import GenerationResult
from ._save import Delivery
from ._secrets import forgetting
from ._sinks import ImageSink

__all__ = ["ImageStream", "SpoolFile", "Streaming"]

BLOCK = 256 * 1024
"""Bytes handed on at a time."""
_UNKNOWN = "application/octet-stream"


@attrs.define
class ImageStream:
    """The image of `Client.stream`: its `media_type`, then its bytes, `async for chunk in it`.

    `result` is the generation's result (ids, timings, asked vs delivered).
    """

    media_type: str
    result: GenerationResult
    _chunks: AsyncIterator[bytes]

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks


@attrs.define
class Streaming:
    """`async with client.stream(...) as image:` — see `Client.stream`."""

    _engine: Engine = attrs.field(alias="engine")
    _request: ImageRequest = attrs.field(alias="request")
    _delivery: Delivery = attrs.field(alias="delivery")
    _pool_timeout: float | UseClientDefault | None = attrs.field(
        alias="pool_timeout", default=USE_CLIENT_DEFAULT
    )
    _spools: list[SpoolFile] = attrs.Factory(list)
    _download: AsyncGenerator[bytes, None] | None = None

    def __attrs_post_init__(self) -> None:
        if self._request.n != 1:
            raise InvalidCountError(
                f"stream() hands on one image: n must be 1, not {self._request.n}"
            )

    def _open(self) -> ImageSink:
        spool = SpoolFile(self._engine.saver.max_image_bytes)
        self._spools.append(spool)
        return spool

    async def __aenter__(self) -> ImageStream:
        delivery = attrs.evolve(self._delivery, opener=self._open)
        with forgetting():
            try:
                result = await self._engine.send(self._request, delivery, self._pool_timeout)
                return await self._stream(result)
            except BaseException:
                self._close()
                raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            if self._download is not None:
                await self._download.aclose()
        self._close()

    def _close(self) -> None:
        for spool in self._spools:
            spool.abort()

    async def _stream(self, result: GenerationResult) -> ImageStream:
        [image] = result.images[:1] or [GeneratedImage(0)]
        spool = next((s for s in self._spools if s.settled is not None), None)
        if spool is not None:
            media_type = image.media_type or _UNKNOWN
            return ImageStream(media_type, result, _read(spool.read))
        assert image.url is not None
        self._download = download = _download(self._engine, image.url, self._delivery)
        first = await anext(download)
        info = sniff(first[:SNIFF_BYTES])
        return ImageStream(info.media_type if info else _UNKNOWN, result, _then(first, download))


@attrs.define
class SpoolFile(HeadSink):
    """An image spooled to an unnamed temporary file (it has no name on disk, and goes when
    closed): memory stays bounded, and it is read back once it is known to be the final image,
    not a draft (`Client.stream`)."""

    max_bytes: int
    _file: IO[bytes] = attrs.field(factory=lambda: tempfile.TemporaryFile(buffering=0))  # noqa: SIM115
    _head: Head = head_field()
    settled: GeneratedImage | None = None

    async def write(self, data: bytes) -> None:
        self._head.take(data)
        self._file.write(data)  # a page-cache write of one chunk: microseconds

    def abort(self) -> None:
        self._file.close()

    def salvage(self) -> bytes | None:
        self.abort()
        return None

    async def settle(
        self, index: int, stem: str, *, overwrite: bool, fallback: str | None = None
    ) -> GeneratedImage:
        del stem, overwrite, fallback  # a spool has no name
        self.settled = self._head.image(index)
        self._file.seek(0)
        return self.settled

    def read(self, size: int) -> bytes:
        """The next `size` bytes of the settled image (b"" at its end)."""
        return self._file.read(size)


async def _read(read: Callable[[int], bytes]) -> AsyncIterator[bytes]:
    while block := read(BLOCK):
        yield block
        await anyio.lowlevel.checkpoint()


async def _then(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


async def _download(engine: Engine, url: str, delivery: Delivery) -> AsyncGenerator[bytes, None]:
    saver = engine.saver
    timeouts = delivery.timeouts or saver.timeouts
    async with saver.host.download(url, timeouts, max_bytes=saver.max_image_bytes) as answer:
        async for chunk in answer.chunks:
            yield chunk
