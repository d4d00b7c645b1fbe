"""Input images, made ready to send: local files read and inlined, data: URIs checked in full.

Base64 work on a 7 MB image takes tens of milliseconds and holds the GIL even in a thread, so it
is done on the loop in slices, letting other tasks run between them. A file is checked and read
in one thread hop (anyio's Path took two).
"""

from __future__ import annotations

import asyncio
import binascii
import stat
from collections.abc import Sequence
from pathlib import Path

from ._base64 import encode
from ._config import MAX_INLINE_IMAGE_BYTES
from ._exceptions import InvalidImageError
from ._models import ImageRequest, image_media_type, is_file_ref

__all__ = ["check_files", "encode_images"]

_SLICE = 3 * 256 * 1024
"""Bytes of image per base64 step (a multiple of 3, so the slices' encodings join up)."""
_B64_SLICE = _SLICE // 3 * 4


async def encode_images(refs: Sequence[str]) -> list[str]:
    """`refs` as the relay takes them: URLs as they are, files as data: URIs.

    A data: URI's head was checked when the request was made; its whole base64 is checked here,
    before anything is sent.
    """
    encoded = []
    for ref in refs:
        if ref.startswith("data:"):
            await _check_base64(ref)
        elif is_file_ref(ref):
            ref = await _encode_file(ref)  # noqa: PLW2901 - the file, as the URI that replaces it
        encoded.append(ref)
    return encoded


def check_files(request: ImageRequest) -> None:
    """What `encode_images` would find wrong with the request's local input images, without
    reading them whole (a dry run): InvalidImageError for a missing file, one too big to send
    inline, or one that is no image."""
    for name in filter(is_file_ref, request.images):
        try:
            path = Path(name)
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise InvalidImageError(f"input image {name!r} is not a file")
            if info.st_size > MAX_INLINE_IMAGE_BYTES:
                raise _too_big(name, info.st_size)
            with path.open("rb") as file:
                image_media_type(file.read(64), source=f"input image {name!r}")
        except FileNotFoundError:
            raise InvalidImageError(f"input image {name!r} does not exist") from None
        except OSError as exc:
            raise InvalidImageError(f"cannot read input image {name!r}: {exc.strerror}") from None


async def _check_base64(uri: str) -> None:
    payload = uri.partition(",")[2]
    try:
        if len(payload) % 4:
            raise binascii.Error("its length is not a multiple of 4")  # noqa: TRY301
        for start in range(0, len(payload), _B64_SLICE):
            binascii.a2b_base64(payload[start : start + _B64_SLICE], strict_mode=True)
            await asyncio.sleep(0)
    except binascii.Error as exc:
        raise InvalidImageError(f"a data: URI image does not hold valid base64: {exc}") from exc


async def _encode_file(name: str) -> str:
    data = await asyncio.to_thread(_read_file, name)
    parts = [f"data:{image_media_type(data, source=repr(name))};base64,"]
    for start in range(0, len(data), _SLICE):
        parts.append(encode(data[start : start + _SLICE]).decode("ascii"))
        await asyncio.sleep(0)
    return "".join(parts)


def _read_file(name: str) -> bytes:
    """The bytes of the regular file `name`, checked against the inline cap first (in a thread)."""
    path = Path(name)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # never opened: a FIFO would block the open
            raise InvalidImageError(f"input image {name!r} is not a file")
        if info.st_size > MAX_INLINE_IMAGE_BYTES:
            raise _too_big(name, info.st_size)
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidImageError(f"input image {name!r} does not exist") from exc
    except OSError as exc:
        raise InvalidImageError(f"cannot read input image {name!r}: {exc.strerror}") from exc


def _too_big(name: str, size: int) -> InvalidImageError:
    return InvalidImageError(
        f"input image {name!r} is {size / 1e6:.1f} MB; the model takes inline images up to "
        f"{MAX_INLINE_IMAGE_BYTES / 1e6:.1f} MB: shrink it or pass a URL"
    )
