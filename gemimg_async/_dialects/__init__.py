"""Relay dialects: how a request is written for a relay, and where its answer keeps the images.

A `Dialect` is a frozen value. It builds the HTTP request for an `ImageRequest` (path, headers,
body), makes the streaming parser that knows where the image strings of its answers are, and
reads a parsed answer into the images found, or the error an answer without one amounts to.
Nothing outside this package knows a relay's JSON.
"""

from __future__ import annotations

from ._base import Dialect, Found, Outgoing, Reading, base_url
from .images import ImagesDialect

__all__ = ["Dialect", "Found", "ImagesDialect", "Outgoing", "Reading", "base_url", "dialect_for"]


def dialect_for(name: str) -> Dialect:
    """The dialect called `name`."""
    if name == "images":
        return ImagesDialect()
    from .._exceptions import ConfigurationError  # noqa: PLC0415 - only on a mistake

    raise ConfigurationError(f"dialect must be 'images', not {name!r}")
