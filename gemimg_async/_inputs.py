"""Input images, made ready to send: local files read and inlined as data: URIs."""

from __future__ import annotations

import functools
import stat
from collections.abc import Sequence

import anyio

from ._config import MAX_INLINE_IMAGE_BYTES
from ._exceptions import InvalidImageError
from ._models import data_uri

__all__ = ["encode_images"]

_PASSED_THROUGH = ("http://", "https://", "data:")


async def encode_images(refs: Sequence[str]) -> list[str]:
    """`refs` as the relay takes them: URLs and data: URIs as they are, files as data: URIs."""
    return [ref if ref.startswith(_PASSED_THROUGH) else await _encode_file(ref) for ref in refs]


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
