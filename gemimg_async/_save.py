"""Putting paid images in place: sinks settled under their names, URLs downloaded, results saved.

A `Saver` is a frozen value: a `GenerationResult` carries one, so `result.save()` needs no client
(and a pickled result saves in another process, through a one-off download session).
"""

from __future__ import annotations

import errno
import functools
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import aiofiles
import attrs

from ._answer import BodyImage
from ._clock import Clock, SystemClock
from ._config import DEFAULT_MAX_IMAGE_BYTES, RetryPolicy, Timeouts
from ._events import Listener
from ._exceptions import DownloadError
from ._models import GeneratedImage
from ._retry import DownloadRetrier, call_with_retries
from ._sinks import (
    WRITE_BLOCK,
    AtomicFile,
    ImageSink,
    MemoryImage,
    NotAnImageError,
    TooLargeError,
)
from ._transport import ImageHost

__all__ = ["Delivery", "Saver", "refuse_taken_names"]


@attrs.frozen
class Delivery:
    """Where a call's images go, and how: its folder, timeouts and listener."""

    folder: Path | None
    overwrite: bool = False
    timeouts: Timeouts | None = None
    on_event: Listener | None = None

    @classmethod
    def to(
        cls,
        save_to: str | os.PathLike[str] | None,
        *,
        overwrite: bool = False,
        timeouts: Timeouts | None = None,
        on_event: Listener | None = None,
    ) -> Delivery:
        return cls(None if save_to is None else Path(save_to), overwrite, timeouts, on_event)


@attrs.frozen
class Saver:
    """Sinks for answers, and how images reach their files: settled, downloaded or copied."""

    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    retry: RetryPolicy = RetryPolicy()
    timeouts: Timeouts = Timeouts()
    clock: Clock = SystemClock()
    host: ImageHost = attrs.field(factory=ImageHost, eq=False, repr=False)
    """The key-less download session; closed (one-off sessions) once its client is."""

    def sink_opener(self, folder: Path | None) -> Callable[[], ImageSink]:
        """Where an answer's inline images stream to: memory, or temporary files in `folder`."""
        if folder is None:
            return functools.partial(MemoryImage, self.max_image_bytes)
        return functools.partial(AtomicFile.create, folder, max_bytes=self.max_image_bytes)

    async def place(
        self, found: Sequence[BodyImage], stem: str, delivery: Delivery, *, paid: str
    ) -> tuple[GeneratedImage, ...]:
        """The found images as results: committed to files, downloaded, or kept in memory.

        They are paid for: a name taken meanwhile gets the `paid` suffix rather than losing one.
        """
        placed: list[GeneratedImage] = []
        try:
            for number, image in enumerate(found):
                if image.sink is not None:
                    placed.append(
                        await image.sink.settle(
                            number, stem, overwrite=delivery.overwrite, fallback=paid
                        )
                    )
                elif delivery.folder is None:
                    placed.append(GeneratedImage(number, url=image.url))
                else:
                    assert image.url is not None
                    placed.append(
                        await self.download(
                            image.url, number, stem, delivery.folder, delivery, fallback=paid
                        )
                    )
        except BaseException:
            for image in found[len(placed) :]:
                if image.sink is not None:
                    image.sink.abort()
            raise
        return tuple(placed)

    async def download(
        self,
        url: str,
        index: int,
        stem: str,
        folder: Path,
        delivery: Delivery,
        *,
        fallback: str | None = None,
    ) -> GeneratedImage:
        """Stream `url` into `folder/{stem}_{index}.{ext}`, retrying what may succeed later."""
        timeouts = delivery.timeouts or self.timeouts

        async def attempt(_: int) -> GeneratedImage:
            sink = AtomicFile.create(folder, max_bytes=self.max_image_bytes)
            try:
                async with self.host.download(
                    url, timeouts, max_bytes=self.max_image_bytes
                ) as answer:
                    async for chunk in answer.chunks:
                        await sink.write(chunk)
            except (NotAnImageError, TooLargeError) as exc:
                sink.abort()
                raise DownloadError(f"{exc}", url=url, status=200) from exc
            except BaseException:
                sink.abort()
                raise
            try:
                image = await sink.settle(
                    index, stem, overwrite=delivery.overwrite, fallback=fallback
                )
            except NotAnImageError as exc:
                raise DownloadError(f"{exc}", url=url, status=200) from exc
            return attrs.evolve(image, url=url)

        retrier = DownloadRetrier(self.retry, random.Random())  # noqa: S311 - jitter
        return await call_with_retries(attempt, retrier, self.clock.sleep, what="download")

    async def save(
        self,
        images: Sequence[GeneratedImage],
        folder: Path,
        stem: str,
        *,
        overwrite: bool,
    ) -> tuple[GeneratedImage, ...]:
        """`GenerationResult.save`: each image from its bytes, its file, or its URL."""
        saved = []
        for image in images:
            if image.data is None and image.path is None:
                assert image.url is not None
                saved.append(
                    await self.download(
                        image.url, image.index, stem, folder, Delivery(folder, overwrite)
                    )
                )
                continue
            sink = AtomicFile.create(folder, max_bytes=self.max_image_bytes)
            try:
                for block in _blocks(image.data) if image.data is not None else ():
                    await sink.write(block)
                if image.path is not None and image.data is None:
                    async with aiofiles.open(image.path, "rb") as source:
                        while block := await source.read(WRITE_BLOCK):
                            await sink.write(block)
            except BaseException:
                sink.abort()
                raise
            settled = await sink.settle(image.index, stem, overwrite=overwrite)
            saved.append(attrs.evolve(image, path=settled.path))
        return tuple(saved)


def _blocks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), WRITE_BLOCK):
        yield bytes(view[start : start + WRITE_BLOCK])


def refuse_taken_names(folder: Path, stem: str, n: int) -> None:
    """FileExistsError before paying for images that could not be saved under their names."""
    for index in range(n):
        for extension in ("png", "jpg", "webp", "gif"):
            path = folder / f"{stem}_{index}.{extension}"
            if os.path.lexists(path):
                raise FileExistsError(
                    errno.EEXIST,
                    "an image by that name exists; pass overwrite=True or another id",
                    str(path),
                )
