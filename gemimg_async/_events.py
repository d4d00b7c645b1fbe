"""What a client tells an observer as it works: for metrics, traces and logs of your own.

Pass `Client(on_event=...)` (every call) or `on_event=` on a call. Listeners are called on the
event loop, synchronously, and must not block; one that raises is logged and the work goes on.
No event ever holds the API key::

    RequestSent        an attempt is about to go out (its place and rate slot taken)
    AnswerReceived     the relay answered 2xx; its body is being read
    AttemptFailed      an attempt failed, and whether (and when) it will be sent again
    ImageSaved         an image is in its file, whole and fsynced
    GenerationFinished a generation ended, with a result or an error
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

import attrs

from ._models import ImageRequest, Timings

__all__ = [
    "AnswerReceived",
    "AttemptFailed",
    "Event",
    "GenerationFinished",
    "ImageSaved",
    "Listener",
    "RequestSent",
    "emit",
]

log = logging.getLogger("gemimg_async")


@attrs.frozen
class RequestSent:
    """Attempt `attempt` of `request` is about to be sent: from now on it may be billed."""

    request: ImageRequest
    attempt: int
    idempotency_key: str
    at: float
    """The client clock's monotonic time."""


@attrs.frozen
class AnswerReceived:
    """The relay answered 2xx after `seconds`; the body (the images) is being read."""

    request: ImageRequest
    attempt: int
    status: int
    request_id: str | None
    seconds: float


@attrs.frozen
class AttemptFailed:
    """Attempt `attempt` failed with `error` (its class name and message); `retry_in` is the
    wait before the next attempt, None when none follows."""

    request: ImageRequest
    attempt: int
    error: str
    failure: str
    """Its billing class: not sent, throttled, server, outcome unknown, permanent."""
    status: int | None
    retry_in: float | None


@attrs.frozen
class ImageSaved:
    """Image `index` of `request` is in its file, whole and fsynced."""

    request: ImageRequest
    index: int
    path: Path
    byte_size: int | None
    width: int | None
    height: int | None


@attrs.frozen
class GenerationFinished:
    """A generation ended: `error` is None when it has its images."""

    request: ImageRequest
    attempts: int
    images: int
    timings: Timings
    request_ids: tuple[str, ...]
    error: str | None = None


Event: TypeAlias = RequestSent | AnswerReceived | AttemptFailed | ImageSaved | GenerationFinished
Listener: TypeAlias = Callable[[Event], None]


def emit(listeners: Sequence[Listener | None], event: Event) -> None:
    """Give `event` to each listener; one that raises is logged, never the caller's problem."""
    for listener in listeners:
        if listener is None:
            continue
        try:
            listener(event)
        except Exception:
            log.exception("an on_event listener raised on %s", type(event).__name__)
