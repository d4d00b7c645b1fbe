"""What a generation gives back: a frozen result, and per-request outcomes of `Client.map`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import attrs

from ._exceptions import GemimgError
from ._models import GeneratedImage, ImageRequest, Timings, Usage, check_stem
from ._prices import Cost, estimate
from ._save import Saver, tagging_of
from ._sizes import Asked, Delivered

__all__ = ["GenerationResult", "Outcome", "SaveError", "report_shortfalls"]

log = logging.getLogger("gemimg_async")


@attrs.frozen
class GenerationResult:
    """The images one request produced, and how it went.

    With `save_to` the images are on disk (`paths`); otherwise `b64_json` images hold their bytes
    and `url` images their URL, valid for about 24 hours: `await result.save(folder)` writes
    them out.
    """

    request: ImageRequest
    images: tuple[GeneratedImage, ...]
    created: int | None
    idempotency_key: str
    request_ids: tuple[str, ...]
    """The relay's id of every attempt that got one, oldest first."""
    attempts: int
    timings: Timings
    stem: str
    """The name its files get: `{stem}_{i}.{ext}`."""
    asked: Asked = attrs.field(
        default=attrs.Factory(
            lambda self: Asked.of(self.request.model, self.request.size), takes_self=True
        )
    )
    """The tier and ratio the request asked for."""
    usage: Usage | None = None
    """Tokens, as the relay reported them (chat and gemini dialects, and some relays)."""
    text: str | None = None
    """What the model said beside the image, where the dialect carries it."""
    saver: Saver = attrs.field(factory=Saver, eq=False, repr=False)
    """How `save` writes and downloads (the client's limits); never the client itself."""
    cost: Cost = attrs.field(
        default=attrs.Factory(lambda self: estimate(self.request), takes_self=True)
    )
    """What it cost: the estimate by the client's price table, and the figure the relay
    reported, where it did (`cost.total` prefers that)."""
    endpoint: str | None = None
    """The name of the endpoint that served it, with `Client(endpoints=...)`."""

    @property
    def request_id(self) -> str | None:
        return self.request_ids[-1] if self.request_ids else None

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(image.path for image in self.images if image.path is not None)

    @property
    def delivered(self) -> tuple[Delivered | None, ...]:
        """Each image's pixel size judged against `asked` (None where it is not known yet: a
        URL image not downloaded)."""
        return tuple(
            Delivered.judge(self.asked, image.width, image.height)
            if image.width and image.height
            else None
            for image in self.images
        )

    @property
    def downgraded(self) -> bool:
        """Whether any image came back at a lower tier or in another shape than asked."""
        return any(d is not None and not d.as_asked for d in self.delivered)

    async def save(
        self,
        folder: str | os.PathLike[str],
        *,
        stem: str | None = None,
        overwrite: bool = False,
    ) -> GenerationResult:
        """Write every image to `folder/{stem}_{i}.{ext}`, the extension from the bytes; the
        result of that: this one, its images' `path` (and `paths`) where they now are.

        URL images are downloaded now. An existing file is never replaced unless `overwrite`:
        FileExistsError instead. The folder is made if need be; InvalidDestinationError when it
        cannot take files. Each file says where it came from, as `Client(metadata=)` says.
        """
        tagging = tagging_of(
            self.request,
            request_id=self.request_id,
            key=self.idempotency_key,
            now=self.saver.clock.time(),
        )
        saved = await self.saver.save(
            self.images,
            Path(folder),
            check_stem(stem or self.stem),
            overwrite=overwrite,
            tagging=tagging,
        )
        return attrs.evolve(self, images=saved)


class SaveError(GemimgError):
    """Images were generated (and paid for) but could not all be written where asked.

    `result` holds every image: those written, with their `path`, and the others with their
    bytes (`data`) or their `url` (valid about 24 hours); nothing paid for is lost.
    """

    def __init__(self, message: str, *, result: GenerationResult) -> None:
        super().__init__(message)
        self.result = result


@attrs.frozen
class Outcome:
    """How one request of `Client.map` ended: a `result`, or the `error` it raised."""

    index: int
    """The request's position in the input."""
    request: ImageRequest
    result: GenerationResult | None = None
    error: Exception | None = None
    attempts: int = 0
    timings: Timings = Timings()
    started: float = 0.0
    """Wall-clock (Unix) time the request got its place in the pool."""
    finished: float = 0.0
    cost: Cost | None = None
    """The result's cost; for an error, the estimate and what the relay reported, if it did
    (a refusal may be billed). None where nothing was estimated."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def paths(self) -> tuple[Path, ...]:
        return self.result.paths if self.result else ()

    @property
    def idempotency_key(self) -> str | None:
        if self.result is not None:
            return self.result.idempotency_key
        return getattr(self.error, "idempotency_key", None)

    @property
    def request_ids(self) -> tuple[str, ...]:
        if self.result is not None:
            return self.result.request_ids
        return tuple(getattr(self.error, "request_ids", ()))

    @property
    def endpoint(self) -> str | None:
        """The endpoint its last attempt went to, with `Client(endpoints=...)`."""
        if self.result is not None:
            return self.result.endpoint
        return getattr(self.error, "endpoint", None)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (no image bytes)."""
        return {
            "index": self.index,
            "id": self.request.id,
            "ok": self.ok,
            "paths": [str(path) for path in self.paths],
            "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}",
            "attempts": self.attempts,
            "request_ids": list(self.request_ids),
            "idempotency_key": self.idempotency_key,
            "started": self.started,
            "finished": self.finished,
            "cost": None if self.cost is None else self.cost.to_json(),
            "endpoint": self.endpoint,
        }


def report_shortfalls(result: GenerationResult) -> None:
    """Warn about what relays do silently: fewer images than asked, a lower tier or another
    shape than asked (judged by pixel count and ratio, never by name)."""
    request = result.request
    if len(result.images) < request.n:
        log.warning("asked for %d images, the relay answered %d", request.n, len(result.images))
    for delivered in result.delivered:
        if delivered is not None and not delivered.as_asked:
            log.warning(
                "asked for %s, got %s: the relay %s",
                result.asked,
                delivered,
                "downgraded the image" if delivered.smaller else "may have ignored size",
            )
