"""The fake relay's images: real PNGs sized like the tiers, rendered once and cached."""

from __future__ import annotations

import asyncio
import base64
import collections
import colorsys
import hashlib
import random
import struct
import threading
import zlib
from collections.abc import Mapping
from typing import Literal

import attrs

from .._models import ASPECT_RATIOS
from .._sizes import PIXELS_1K, TIERS, Tier, pixels, tier_of

__all__ = [
    "C2PA_MANIFEST",
    "MODELS",
    "RATIOS",
    "ImageKey",
    "Rendered",
    "b64",
    "image",
    "palette",
    "parse_size",
    "pixel_size",
    "png",
    "with_c2pa",
]

#: The models the fake relay accepts, with the tier of their images.
MODELS: Mapping[str, Tier] = {
    "gemini-3-pro-image-preview": "1K",
    "gemini-3-pro-image-preview-2k": "2K",
    "gemini-3-pro-image-preview-4k": "4K",
}
#: The aspect ratios the fake relay accepts as ``size`` (``W:H``; ``WxH`` is accepted too).
RATIOS: tuple[str, ...] = ASPECT_RATIOS
_BY_PIXELS: dict[str, tuple[str, Tier]] = {
    f"{w}x{h}": (ratio, tier)
    for ratio in PIXELS_1K
    for tier in TIERS
    for w, h in [pixels(ratio, tier) or (0, 0)]
}
_CACHE_BYTES = 384 * 1024 * 1024
_PALETTES = 36


def pixel_size(model: str, size: str = "1:1") -> tuple[int, int]:
    """The (width, height) the fake relay answers for *model* and *size*: Google's table, the
    tier from the model's name (1K for others). *size* is a ratio (``16:9`` or ``16x9``) or one
    of the table's pixel sizes (``1376x768``), which sets the tier too."""
    ratio, tier = parse_size(size)
    found = pixels(ratio, tier or tier_of(model) or "1K")
    assert found is not None  # parse_size gives ratios of the table
    return found


def parse_size(size: str) -> tuple[str, Tier | None]:
    """The ratio *size* asks for, and the tier when it is a pixel size; ValueError if none."""
    normal = size.strip().lower()
    if normal in _BY_PIXELS:
        return _BY_PIXELS[normal]
    normal = normal.replace("x", ":")
    if normal not in RATIOS:
        raise ValueError(f"size must be one of {', '.join(RATIOS)}, got {size!r}")
    return normal, None


@attrs.frozen
class ImageKey:
    width: int
    height: int
    style: Literal["gradient", "noise"]
    palette: int
    c2pa: bool = False
    """A `caBX` chunk (a C2PA manifest) after `IHDR`, as Google marks its images."""


@attrs.define
class Rendered:
    png: bytes
    b64: bytes | None = None


class _ImageCache:
    """A least-recently-used cache of rendered images, bounded by (estimated) bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._items: collections.OrderedDict[ImageKey, Rendered] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: ImageKey) -> Rendered | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: ImageKey, value: Rendered) -> Rendered:
        with self._lock:
            value = self._items.setdefault(key, value)
            self._items.move_to_end(key)
            total = sum(_footprint(v) for v in self._items.values())
            while total > self._max_bytes and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                total -= _footprint(evicted)
            return value


def _footprint(rendered: Rendered) -> int:
    return len(rendered.png) * 7 // 3  # the PNG plus its base64


_CACHE = _ImageCache(_CACHE_BYTES)


async def image(key: ImageKey) -> Rendered:
    found = _CACHE.get(key)
    if found is None:
        found = _CACHE.put(key, Rendered(await asyncio.to_thread(_render, key)))
    return found


async def b64(rendered: Rendered) -> bytes:
    if rendered.b64 is None:
        rendered.b64 = await asyncio.to_thread(base64.b64encode, rendered.png)
    return rendered.b64


def _render(key: ImageKey) -> bytes:
    if key.style == "noise":
        made = _noise_png(key.width, key.height)
    else:
        made = _gradient_png(key.width, key.height, key.palette)
    return with_c2pa(made) if key.c2pa else made


def png(
    width: int = 3,
    height: int = 2,
    colour: tuple[int, int, int] = (128, 128, 128),
    *,
    c2pa: bool = False,
) -> bytes:
    """A valid RGB PNG of one colour: an input image for your tests; with `c2pa`, carrying a
    (fake) C2PA manifest in a `caBX` chunk, as Google's images do."""
    made = _png(width, height, zlib.compress((b"\x00" + bytes(colour) * width) * height))
    return with_c2pa(made) if c2pa else made


C2PA_MANIFEST = b"\x00\x00\x00\x2cjumb\x00\x00\x00\x24jumdc2pa" + bytes(24)
"""The payload of the fake relay's `caBX` chunks: the head of a JUMBF box labelled c2pa."""


def with_c2pa(data: bytes, *, after_data: bool = False) -> bytes:
    """The PNG `data` with a `caBX` chunk right after `IHDR` (where C2PA recommends it), or
    before `IEND` with `after_data` (which C2PA allows too)."""
    chunk = _chunk(b"caBX", C2PA_MANIFEST)
    at = len(data) - 12 if after_data else 33  # IEND's 12 bytes; signature and IHDR's 25
    return data[:at] + chunk + data[at:]


def _png(width: int, height: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", idat),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _palette_colours(palette: int) -> tuple[tuple[int, int, int], ...]:
    hue = palette / _PALETTES
    stops = ((0.0, 0.35, 0.98), (0.09, 0.6, 0.9), (0.2, 0.7, 0.6))
    colours = []
    for shift, saturation, value in stops:
        rgb = colorsys.hsv_to_rgb((hue + shift) % 1.0, saturation, value)
        colours.append((round(rgb[0] * 255), round(rgb[1] * 255), round(rgb[2] * 255)))
    return tuple(colours)


def _gradient_png(width: int, height: int, palette: int) -> bytes:
    """A diagonal three-colour gradient: each row is a one-pixel shift of one long strip."""
    colours = _palette_colours(palette)
    length = width + height
    strip = bytearray()
    for i in range(length):
        t = 2.0 * i / max(length - 1, 1)
        low, high = (colours[0], colours[1]) if t <= 1.0 else (colours[1], colours[2])
        t = t if t <= 1.0 else t - 1.0
        strip += bytes(round(a + (b - a) * t) for a, b in zip(low, high, strict=True))
    row_bytes = width * 3
    rows = b"".join(b"\x00" + strip[y * 3 : y * 3 + row_bytes] for y in range(height))
    return _png(width, height, zlib.compress(rows, 6))


def _noise_png(width: int, height: int) -> bytes:
    """Incompressible pixels stored uncompressed (zlib level 0): the PNG is ~3 bytes per pixel."""
    rng = random.Random(f"{width}x{height}")  # noqa: S311 - reproducible pixels, not secrets
    compressor = zlib.compressobj(0)
    row_bytes = width * 3
    parts = [compressor.compress(b"\x00" + rng.randbytes(row_bytes)) for _ in range(height)]
    parts.append(compressor.flush())
    return _png(width, height, b"".join(parts))


def palette(prompt: str, index: int) -> int:
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
    return (int.from_bytes(digest[:4], "big") + index * 7) % _PALETTES
