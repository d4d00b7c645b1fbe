"""Relay dialects: how a request is written for a relay, and where its answer keeps the images.

A `Dialect` is a frozen value. It builds the HTTP request for an `ImageRequest` (path, headers,
body), gives the streaming parser the `Schema` of where the image strings of its answers are, and
reads a parsed answer into the images found, or the error an answer without one amounts to.
Nothing outside this package knows a relay's JSON.
"""

from __future__ import annotations

from .._exceptions import ConfigurationError
from ._base import (
    SIZE_STYLES,
    Dialect,
    Found,
    Outgoing,
    Reading,
    SizeStyle,
    base_url,
)
from .chat import ChatDialect
from .gemini import GeminiDialect
from .images import ImagesDialect

__all__ = [
    "DIALECTS",
    "SIZE_STYLES",
    "ChatDialect",
    "Dialect",
    "Found",
    "GeminiDialect",
    "ImagesDialect",
    "Outgoing",
    "Reading",
    "SizeStyle",
    "base_url",
    "dialect_for",
]

DIALECTS = ("images", "chat", "gemini")


def dialect_for(dialect: str | Dialect, size_style: str | None = None) -> Dialect:
    """The dialect `dialect` names (or `dialect` itself), with `size_style` when given."""
    if not isinstance(dialect, str):
        if size_style is not None:
            raise ConfigurationError("give size_style to the dialect you pass, not beside it")
        return dialect
    if dialect == "images":
        return ImagesDialect() if size_style is None else ImagesDialect(size_style)  # type: ignore[arg-type]
    if dialect == "chat":
        return ChatDialect() if size_style is None else ChatDialect(size_style)  # type: ignore[arg-type]
    if dialect == "gemini":
        if size_style not in (None, "image_config"):
            raise ConfigurationError(
                "the gemini dialect always sends the size as generationConfig.imageConfig: "
                f"leave size_style out, not {size_style!r}"
            )
        return GeminiDialect()
    raise ConfigurationError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
