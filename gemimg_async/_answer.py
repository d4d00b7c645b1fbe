"""A 2xx answer as images, for any dialect: its body streamed into sinks as it arrives, then read
by the dialect. The one place a body that is not what it should be becomes our error.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Callable, Iterable

import anyio
import attrs

from ._dialects import Dialect, Found, Reading
from ._exceptions import MalformedResponseError, OutcomeUnknownError
from ._jsonstream import ImageStreamParser, JSONStreamError, JSONTruncatedError, Path
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
    parser = ImageStreamParser(dialect.schema)
    sinks: dict[Path, ImageSink] = {}
    images: list[BodyImage] = []
    most = IMAGES_PER_N * request.n
    try:
        async for chunk in chunks:
            for path, data in parser.feed(chunk):
                sink = sinks.get(path)
                if sink is None:
                    _check_count(len(sinks), most, request.n)
                    sink = sinks[path] = open_sink()
                await sink.write(data)
        doc = parser.close()
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
