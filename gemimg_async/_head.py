"""The first and last bytes of an image as it streams in: enough to check that it is one, and
whole, within the size cap, and to read its pixel size; the sinks keep one each."""

from __future__ import annotations

from typing import Any

import attrs

from ._media import SNIFF_BYTES, MediaInfo, is_image, sniff
from ._models import GeneratedImage

__all__ = ["Head", "HeadSink", "NotAnImageError", "TooLargeError", "head_field"]

_PNG_END = b"IEND\xaeB`\x82"
_MAGIC_BYTES = 16
"""Enough of the head for every type's magic."""


class NotAnImageError(ValueError):
    """The bytes are not a PNG, JPEG, WEBP or GIF image."""


class TooLargeError(ValueError):
    """More bytes than the image size cap."""


@attrs.define
class Head:
    """The first and last bytes of an image: enough to check it is one, and whole, and to read
    its size."""

    max_bytes: int
    size: int = 0
    _head: bytes = b""
    """The first SNIFF_BYTES: the first chunk itself when it holds them (no copy)."""
    _tail: bytes = b""
    _sniffed: bool = False
    _info: MediaInfo | None = None
    """What `info` found, until more bytes come."""

    def take(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise TooLargeError(f"the image is larger than the {self.max_bytes}-byte cap")
        self._tail = data[-8:] if len(data) >= 8 else (self._tail + data)[-8:]  # noqa: PLR2004 - len(_PNG_END)
        self._info = None
        if len(self._head) < SNIFF_BYTES:
            piece = bytes(data[: SNIFF_BYTES - len(self._head)])  # a whole small bytes: itself
            self._head = self._head + piece if self._head else piece
            if not self._sniffed and len(self._head) >= _MAGIC_BYTES:
                self._sniffed = True
                if not is_image(self._head):
                    raise NotAnImageError(_describe_non_image(self._head))

    def info(self) -> MediaInfo:
        """What the image is; NotAnImageError when it is none, or a PNG cut short."""
        info = self._info
        if info is None:
            info = sniff(self._head)
            if info is None:
                raise NotAnImageError(_describe_non_image(self._head))
            if info.extension == "png" and self._tail != _PNG_END:
                raise NotAnImageError(
                    f"the PNG is cut short after {self.size} bytes (no IEND chunk)"
                )
            self._info = info
        return info

    def image(self, index: int, *, byte_size: int | None = None, **where: Any) -> GeneratedImage:
        """The image as a result holds it (`byte_size`: what was written, when not the bytes
        that came), and `where` it is."""
        info = self.info()
        return GeneratedImage(
            index,
            media_type=info.media_type,
            width=info.width,
            height=info.height,
            byte_size=self.size if byte_size is None else byte_size,
            **where,
        )


def _describe_non_image(head: bytes) -> str:
    text = head[:64].decode("utf-8", "replace").strip()
    kind = "an HTML page" if text.lstrip().startswith("<") else f"{len(head)} bytes"
    return f"expected a PNG, JPEG, WEBP or GIF image, got {kind} starting {text[:40]!r}"


class HeadSink:
    """What every sink knows from the head of its bytes: their size, and whether they are a
    whole image. A sink keeps a `max_bytes` and `_head: Head = head_field()`."""

    __slots__ = ()
    _head: Head

    @property
    def size(self) -> int:
        return self._head.size

    def check(self) -> None:
        """NotAnImageError unless the bytes so far are a whole image."""
        self._head.info()


def head_field() -> Any:
    """A sink's `_head`, made for its `max_bytes`."""
    return attrs.field(
        init=False, default=attrs.Factory(lambda sink: Head(sink.max_bytes), takes_self=True)
    )
