"""A 2xx answer as images, for any dialect: its body streamed into sinks as it arrives, then read
by the dialect. The one place a body that is not what it should be becomes our error.

A small answer whose first chunk holds it whole (a tiny image's) is parsed in one pass instead
(`parse_whole`: one json.loads, within the streaming parser's limits, with the same result);
anything else streams.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import anyio
import attrs

from ._dialects import Dialect, Found, Reading
from ._exceptions import MalformedResponseError, OutcomeUnknownError
from ._jsonstream import (
    ImageStreamParser,
    JSONStreamError,
    JSONTruncatedError,
    Path,
    Schema,
    parse_whole,
)
from ._models import ImageRequest
from ._sinks import ImageSink, NotAnImageError, TooLargeError

__all__ = ["IMAGES_PER_N", "BodyImage", "Received", "receive"]

IMAGES_PER_N = 4
"""An answer may hold up to this many images per image asked (`n`): the model's drafts come
along through some relays. More is a broken or hostile relay: MalformedResponseError."""


@attrs.frozen
class BodyImage:
    """One image of an answer: its sink (the bytes, received) or its URL (to fetch)."""

    sink: ImageSink | None = None
    url: str | None = None


@attrs.frozen
class Received:
    """An answer's images, in order, and what the dialect read beside them."""

    images: tuple[BodyImage, ...]
    reading: Reading


async def receive(
    chunks: AsyncIterator[bytes],
    dialect: Dialect,
    request: ImageRequest,
    open_sink: Callable[[], ImageSink],
    *,
    request_id: str | None,
) -> Received:
    """Read an answer's body, streaming every inline image into a sink from `open_sink`.

    Raises OutcomeUnknownError for a body cut short (the image may be billed),
    MalformedResponseError for one that is no JSON or holds no whole image, and what the dialect
    says an answer without an image means. On any error every sink is aborted.
    """
    try:
        return await _receive(chunks, dialect, request, open_sink, request_id)
    except JSONTruncatedError as exc:
        raise OutcomeUnknownError(
            f"the relay's answer ended early ({exc}); it may have generated and billed it"
        ) from exc
    except (JSONStreamError, NotAnImageError, TooLargeError) as exc:
        raise MalformedResponseError(
            f"the relay answered 200, but {exc}", status=200, request_id=request_id
        ) from exc


async def _receive(
    chunks: AsyncIterator[bytes],
    dialect: Dialect,
    request: ImageRequest,
    open_sink: Callable[[], ImageSink],
    request_id: str | None,
) -> Received:
    sinks: dict[Path, ImageSink] = {}
    images: list[BodyImage] = []
    most = IMAGES_PER_N * request.n

    async def take(pieces: Iterable[tuple[Path, bytes]]) -> None:
        for path, data in pieces:
            sink = sinks.get(path)
            if sink is None:
                _check_count(len(sinks), most, request.n)
                sink = sinks[path] = open_sink()
            await sink.write(data)

    try:
        doc = await _document(chunks, dialect.schema, take)
        reading = dialect.read(doc, request, request_id=request_id)
        for found in reading.images:
            image = await _image(found, sinks, open_sink)
            images.append(image)
            if image.sink is not None:
                image.sink.check()
    except BaseException:
        _abort_all([*sinks.values(), *(image.sink for image in images)])
        raise
    used = {id(image.sink) for image in images}
    _abort_all(sink for sink in sinks.values() if id(sink) not in used)
    return Received(tuple(images), reading)


async def _document(
    chunks: AsyncIterator[bytes],
    schema: Schema,
    take: Callable[[Iterable[tuple[Path, bytes]]], Awaitable[None]],
) -> Any:
    """The body's document, its image pieces given to `take` as they come."""
    first = await anext(chunks, None)
    whole = None if first is None else parse_whole(first, schema)
    if whole is not None:  # a small answer, all in its first chunk
        doc, pieces = whole
        await take(pieces)
        async for chunk in chunks:  # the end of the body: whitespace at most
            _check_space(chunk)
        return doc
    parser = ImageStreamParser(schema)
    if first is not None:
        await take(parser.feed(first))
    async for chunk in chunks:
        await take(parser.feed(chunk))
    return parser.close()


def _check_space(chunk: bytes) -> None:
    if chunk.strip(b" \t\n\r"):
        raise JSONStreamError("extra data after the JSON document")


async def _image(
    found: Found, sinks: dict[Path, ImageSink], open_sink: Callable[[], ImageSink]
) -> BodyImage:
    if found.path is not None:
        return BodyImage(sink=sinks[found.path])
    if found.url is not None:
        return BodyImage(url=found.url)
    assert found.inline is not None
    sink = open_sink()
    try:
        await sink.write(await anyio.to_thread.run_sync(_decode_inline, found.inline))
    except BaseException:
        sink.abort()
        raise
    return BodyImage(sink=sink)


def _check_count(opened: int, most: int, n: int) -> None:
    if opened >= most:
        raise JSONStreamError(f"the answer holds more than {most} images for n={n}")


def _abort_all(sinks: Iterable[ImageSink | None]) -> None:
    seen: set[int] = set()
    for sink in sinks:
        if sink is not None and id(sink) not in seen:
            seen.add(id(sink))
            sink.abort()


def _decode_inline(value: str) -> bytes:
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value)
    except (binascii.Error, ValueError) as exc:
        raise JSONStreamError(f"an image string is not base64: {exc}") from exc
