"""Putting paid images in place: sinks settled under their names, URLs downloaded, results saved.

A `Saver` is a frozen value: a `GenerationResult` carries one, so `result.save()` needs no client
(and a pickled result saves in another process, through a one-off download session).

Files it writes say where they came from (`metadata`): each gets a `PngTagger` from the `Tagging`
it is given, which puts the provenance into a PNG as it streams, or into a sidecar.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeAlias

import aiofiles
import attrs

from ._answer import BodyImage
from ._clock import Clock, SystemClock
from ._config import DEFAULT_MAX_IMAGE_BYTES, RetryPolicy, Timeouts
from ._destination import Destination
from ._events import Listener
from ._exceptions import DownloadError
from ._folders import check_folder
from ._imagehost import ImageHost
from ._media import SNIFF_BYTES, sniff
from ._models import GeneratedImage, ImageRequest
from ._naming import FolderNames, refuse_taken_names
from ._pngmeta import PngTagger
from ._provenance import Provenance
from ._retry import DownloadRetrier, call_with_retries
from ._sinks import (
    WRITE_BLOCK,
    AtomicFile,
    ImageSink,
    MemoryImage,
    NotAnImageError,
    TooLargeError,
)
from ._sizes import Asked

__all__ = ["Delivery", "Placed", "Saver", "Tagging", "tagging_of"]

Tagging: TypeAlias = Callable[[], PngTagger]
"""A new tagger for each image of a generation (its provenance, and what it asked)."""


def tagging_of(request: ImageRequest, *, request_id: str | None, key: str, now: float) -> Tagging:
    """What the images of one answer to `request` say of themselves, once saved: worked out
    when the first file asks (made for every answer whose images go to files)."""
    made: list[tuple[Provenance, Asked]] = []

    def tagger() -> PngTagger:
        if not made:
            asked = Asked.of(request.model, request.size)
            provenance = Provenance.of(
                prompt=request.prompt,
                model=request.model,
                asked=asked,
                job_id=request.id,
                request_id=request_id,
                idempotency_key=key,
                created=now,
            )
            made.append((provenance, asked))
        return PngTagger(*made[0])

    return tagger


@attrs.frozen
class Delivery:
    """Where a call's images go, and how: its folder, timeouts and listener."""

    folder: Path | None
    overwrite: bool = False
    timeouts: Timeouts | None = None
    on_event: Listener | None = None
    opener: Callable[[], ImageSink] | None = attrs.field(default=None, eq=False)
    """Where inline images stream to, instead of memory or `folder` (`Client.stream`)."""
    destination: Destination | None = attrs.field(default=None, eq=False)
    """Where images go instead of a folder (object storage), and what waits before a POST."""
    names: FolderNames | None = attrs.field(default=None, eq=False)
    """The folder's names as a map knows them (`_naming.FolderNames`); None: ask the folder."""

    def refuse_taken(self, stem: str, n: int) -> None:
        """FileExistsError before paying for images that could not be saved under their names
        (unless they may replace what is there)."""
        if self.folder is None or self.overwrite:
            return
        if self.names is not None:
            self.names.claim(stem, n)
        else:
            refuse_taken_names(self.folder, stem, n)

    @property
    def before_send(self) -> Callable[[ImageRequest], Awaitable[None]] | None:
        """The destination's `before_send`, if any: awaited just before each attempt's POST."""
        return None if self.destination is None else self.destination.before_send

    @property
    def writes(self) -> bool:
        """Whether images go to files (a folder's, or a destination's), not only to memory."""
        return self.folder is not None or self.destination is not None

    @property
    def where(self) -> str:
        return str(self.folder if self.destination is None else self.destination)

    @classmethod
    def to(
        cls,
        save_to: str | os.PathLike[str] | Destination | None,
        *,
        overwrite: bool = False,
        timeouts: Timeouts | None = None,
        on_event: Listener | None = None,
    ) -> Delivery:
        if isinstance(save_to, Destination):
            return cls(None, overwrite, timeouts, on_event, destination=save_to)
        return cls(None if save_to is None else Path(save_to), overwrite, timeouts, on_event)


@attrs.frozen
class Placed:
    """Images put in place under `stem`, and which of them could not be written (kept in
    memory or by URL)."""

    images: tuple[GeneratedImage, ...]
    stem: str
    unsaved: tuple[str, ...] = ()
    failure: OSError | None = None
    """The first disk error, for the SaveError it becomes (a full disk halts a batch)."""


def _kept(number: int, image: BodyImage) -> GeneratedImage:
    """An image that could not be written, as the result keeps it: its bytes or its URL."""
    if image.sink is None:
        return GeneratedImage(number, url=image.url)
    data = image.sink.salvage()
    info = sniff(data[:SNIFF_BYTES]) if data else None
    return GeneratedImage(
        number,
        data=data,
        media_type=info.media_type if info else None,
        width=info.width if info else None,
        height=info.height if info else None,
        byte_size=len(data) if data is not None else None,
    )


@attrs.frozen
class Saver:
    """Sinks for answers, and how images reach their files: settled, downloaded or copied."""

    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    retry: RetryPolicy = RetryPolicy()
    timeouts: Timeouts = Timeouts()
    clock: Clock = SystemClock()
    host: ImageHost = attrs.field(factory=ImageHost, eq=False, repr=False)
    """The key-less download session; closed (one-off sessions) once its client is."""
    metadata: bool = True
    """Files say where they came from (PNG text chunks, or a sidecar); False: the relay's bytes,
    as they came."""

    def _file(self, folder: Path, tagging: Tagging | None) -> AtomicFile:
        tagger = tagging() if tagging is not None and self.metadata else None
        return AtomicFile.create(folder, max_bytes=self.max_image_bytes, tagger=tagger)

    def sink_opener(
        self, delivery: Delivery, tagging: Tagging | None = None
    ) -> Callable[[], ImageSink]:
        """Where an answer's inline images stream to: the delivery's own opener, memory, or
        temporary files in its folder (memory standing in for a file that cannot be made: the
        image is paid for), tagged by `tagging`."""
        if delivery.opener is not None:
            return delivery.opener
        if delivery.destination is not None:
            tags = tagging if self.metadata else None
            return functools.partial(delivery.destination.open_sink, self.max_image_bytes, tags)
        folder = delivery.folder
        if folder is None:
            return functools.partial(MemoryImage, self.max_image_bytes)

        def open_file() -> ImageSink:
            try:
                return self._file(folder, tagging)
            except OSError as exc:
                return MemoryImage(self.max_image_bytes, failure=exc)

        return open_file

    async def place(
        self,
        found: Sequence[BodyImage],
        stem: str,
        delivery: Delivery,
        *,
        paid: str,
        tagging: Tagging | None = None,
    ) -> Placed:
        """The found images as results: committed to files, downloaded, or kept in memory.

        They are paid for: a name taken meanwhile gets the `paid` suffix rather than losing one,
        and an image that cannot be written is kept (its bytes, or its URL) and said `unsaved`.
        """
        placed: list[GeneratedImage] = []
        unsaved: list[str] = []
        failure: OSError | None = None
        try:
            for number, image in enumerate(found):
                try:
                    placed.append(
                        await self._place(number, image, stem, delivery, paid=paid, tagging=tagging)
                    )
                except OSError as exc:
                    placed.append(_kept(number, image))
                    unsaved.append(f"image {number}: {exc.strerror or exc}")
                    failure = failure or exc
        except BaseException:
            for image in found[len(placed) :]:
                if image.sink is not None:
                    image.sink.abort()
            raise
        return Placed(tuple(placed), stem, tuple(unsaved), failure)

    async def _place(
        self,
        number: int,
        image: BodyImage,
        stem: str,
        delivery: Delivery,
        *,
        paid: str,
        tagging: Tagging | None,
    ) -> GeneratedImage:
        if image.sink is not None:
            return await image.sink.settle(
                number, stem, overwrite=delivery.overwrite, fallback=paid
            )
        assert image.url is not None
        if delivery.destination is not None:
            opener = self.sink_opener(delivery, tagging)
            return await self.download(
                image.url, number, stem, None, delivery, fallback=paid, open_sink=opener
            )
        if delivery.folder is None:
            return GeneratedImage(number, url=image.url)
        return await self.download(
            image.url, number, stem, delivery.folder, delivery, fallback=paid, tagging=tagging
        )

    async def download(
        self,
        url: str,
        index: int,
        stem: str,
        folder: Path | None,
        delivery: Delivery,
        *,
        fallback: str | None = None,
        tagging: Tagging | None = None,
        open_sink: Callable[[], ImageSink] | None = None,
    ) -> GeneratedImage:
        """Stream `url` into `folder/{stem}_{index}.{ext}` (or a sink from `open_sink`),
        retrying what may succeed later."""
        timeouts = delivery.timeouts or self.timeouts

        async def attempt(_: int) -> GeneratedImage:
            if open_sink is not None:
                sink = open_sink()
            else:
                assert folder is not None
                sink = self._file(folder, tagging)
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
            except OSError:
                sink.abort()  # the URL stays good: the caller keeps it
                raise
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
        tagging: Tagging | None = None,
    ) -> tuple[GeneratedImage, ...]:
        """`GenerationResult.save`: each image from its bytes, its file (copied as it is: it
        says where it came from already), or its URL; tagged by `tagging`."""
        check_folder(folder)
        saved = []
        for image in images:
            if image.data is None and image.path is None:
                assert image.url is not None
                saved.append(
                    await self.download(
                        image.url,
                        image.index,
                        stem,
                        folder,
                        Delivery(folder, overwrite),
                        tagging=tagging,
                    )
                )
                continue
            sink = self._file(folder, tagging if image.data is not None else None)
            try:
                for block in _blocks(image.data) if image.data is not None else ():
                    await sink.write(block)
                if image.path is not None and image.data is None:
                    async with aiofiles.open(image.path, "rb") as source:
                        while block := await source.read(WRITE_BLOCK):
                            await sink.write(block)
                settled = await sink.settle(image.index, stem, overwrite=overwrite)
            except BaseException:
                sink.abort()
                raise
            saved.append(attrs.evolve(image, path=settled.path))
        return tuple(saved)


def _blocks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), WRITE_BLOCK):
        yield bytes(view[start : start + WRITE_BLOCK])
