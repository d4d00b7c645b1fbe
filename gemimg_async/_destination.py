"""Where a call's images go when it is not a folder: sinks of its own, and a hook awaited before
each POST (`Client.map(..., save_to=Destination(...))`).

A batch into object storage (`_storebatch`) gives one: its images stream into uploads
(`_upload_sink.UploadSink`), and its send log is durably in the store before any request that
may be billed leaves (`before_send`), so that a run killed at any moment is resumed without
paying twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs

from ._models import ImageRequest
from ._pngmeta import PngTagger
from ._sinks import ImageSink

__all__ = ["Destination", "SinkFactory"]

SinkFactory = Callable[[int, Callable[[], PngTagger] | None], ImageSink]
"""A new sink for one image, given the byte cap and what the image may say of itself."""


@attrs.frozen(eq=False)
class Destination:
    """Images into sinks from `open_sink` (inline ones as they arrive, URLs downloaded into
    them); `before_send`, when given, is awaited just before each attempt's POST (after the
    `RequestSent` event), and what it raises fails the attempt unsent."""

    where: str
    """Where the images go, for messages."""
    open_sink: SinkFactory
    before_send: Callable[[ImageRequest], Awaitable[None]] | None = None

    def __str__(self) -> str:
        return self.where
