"""Input images, made ready to send: local files read and inlined, data: URIs checked in full."""

from __future__ import annotations

import binascii
import functools
import stat
from collections.abc import Sequence

import anyio

from ._config import MAX_INLINE_IMAGE_BYTES
from ._exceptions import InvalidImageError
from ._models import data_uri

__all__ = ["encode_images"]


async def encode_images(refs: Sequence[str]) -> list[str]:
    """`refs` as the relay takes them: URLs as they are, files as data: URIs.

    A data: URI's head was checked when the request was made; its whole base64 is checked here,
    off the event loop, before anything is sent.
    """
    encoded = []
    for ref in refs:
        if ref.startswith("data:"):
            await anyio.to_thread.run_sync(_check_base64, ref)
        elif not ref.startswith(("http://", "https://")):
            ref = await _encode_file(ref)  # noqa: PLW2901 - the file, as the URI that replaces it
        encoded.append(ref)
    return encoded


def _check_base64(uri: str) -> None:
    try:
        binascii.a2b_base64(uri.partition(",")[2], strict_mode=True)
    except binascii.Error as exc:
        raise InvalidImageError(f"a data: URI image does not hold valid base64: {exc}") from exc


async def _encode_file(name: str) -> str:
    path = anyio.Path(name)
    try:
        info = await path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise InvalidImageError(f"input image {name!r} is not a file")
        if info.st_size > MAX_INLINE_IMAGE_BYTES:
            raise InvalidImageError(
                f"input image {name!r} is {info.st_size / 1e6:.1f} MB; the model takes inline "
                f"images up to {MAX_INLINE_IMAGE_BYTES / 1e6:.1f} MB: shrink it or pass a URL"
            )
        data = await path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidImageError(f"input image {name!r} does not exist") from exc
    except OSError as exc:
        raise InvalidImageError(f"cannot read input image {name!r}: {exc.strerror}") from exc
    return await anyio.to_thread.run_sync(functools.partial(data_uri, data, source=repr(name)))
