"""Image types from magic bytes and pixel sizes from headers, never from names or claims."""

from __future__ import annotations

import struct

import attrs

__all__ = ["SNIFF_BYTES", "MediaInfo", "is_image", "sniff"]

SNIFF_BYTES = 64 * 1024
"""Bytes of an image's head that are enough to tell its type, and its size in all but odd JPEGs."""

_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
    (b"GIF87a", "image/gif", "gif"),
    (b"GIF89a", "image/gif", "gif"),
)
_MAGICS = tuple(magic for magic, _, _ in _TYPES)
_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)


@attrs.frozen
class MediaInfo:
    """What an image's first bytes say it is."""

    media_type: str
    extension: str
    width: int | None = None
    height: int | None = None


def sniff(head: bytes) -> MediaInfo | None:
    """The type and, when the head holds it, the pixel size of the image that starts with `head`.

    None when `head` starts no PNG, JPEG, GIF or WEBP image.
    """
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return MediaInfo("image/webp", "webp", *_webp_size(head))
    for magic, media_type, extension in _TYPES:
        if head.startswith(magic):
            return MediaInfo(media_type, extension, *_SIZERS[extension](head))
    return None


def is_image(head: bytes) -> bool:
    """Whether `head` starts a PNG, JPEG, GIF or WEBP image (what `sniff` tells, without the
    size): checked on every image's first bytes."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head.startswith(_MAGICS)


def _png_size(head: bytes) -> tuple[int | None, int | None]:
    if len(head) >= 24 and head[12:16] == b"IHDR":  # noqa: PLR2004
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    return None, None


def _gif_size(head: bytes) -> tuple[int | None, int | None]:
    if len(head) >= 10:  # noqa: PLR2004
        width, height = struct.unpack("<HH", head[6:10])
        return width, height
    return None, None


def _jpeg_size(head: bytes) -> tuple[int | None, int | None]:
    pos = 2
    while pos + 9 <= len(head):
        if head[pos] != 0xFF:  # noqa: PLR2004
            return None, None
        marker = head[pos + 1]
        if marker == 0xFF:  # noqa: PLR2004 - fill byte
            pos += 1
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", head[pos + 5 : pos + 9])
            return width, height
        (length,) = struct.unpack(">H", head[pos + 2 : pos + 4])
        pos += 2 + length
    return None, None


def _webp_size(head: bytes) -> tuple[int | None, int | None]:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:  # noqa: PLR2004
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    if chunk == b"VP8 " and len(head) >= 30:  # noqa: PLR2004
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:  # noqa: PLR2004
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None, None


_SIZERS = {"png": _png_size, "jpg": _jpeg_size, "gif": _gif_size}
