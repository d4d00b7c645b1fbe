"""Base64 for image bytes: pybase64's SIMD codec when it is installed (`gemimg_async[speedups]`),
the standard library's otherwise, with the same results.

Decoding an answer's image is most of what a `b64_json` request costs the client: the standard
library reads a 30 KB image's base64 in about 160 us and a 4K image's 64 MB in about 350 ms on
this project's machines; pybase64 (AVX2) in about 4 us and 55 ms (`benchmarks/bench_base64.py`).

`decode_strict` takes canonical base64 only (the alphabet, no whitespace, padding where it
belongs) and raises `binascii.Error` for anything else. The two codecs agree on every input
whose padding, if any, is in its last four characters, which its callers check first: on
excess padding after a whole quad (`QUJD====`) the standard library's strict mode gives the
bytes and pybase64 an error. `encode` gives the same text with either.
"""

from __future__ import annotations

import binascii
import functools
from collections.abc import Callable

__all__ = ["CODEC", "decode_strict", "encode"]


def _stdlib_decode(data: str | bytes) -> bytes:
    return binascii.a2b_base64(data, strict_mode=True)


def _stdlib_encode(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False)


decode_strict: Callable[[str | bytes], bytes]
encode: Callable[[bytes], bytes]

try:
    import pybase64
except ImportError:  # the standard library's codec: correct, 10 to 40 times slower
    CODEC = "binascii"
    decode_strict, encode = _stdlib_decode, _stdlib_encode
else:
    CODEC = "pybase64"
    decode_strict = functools.partial(pybase64.b64decode, validate=True)  # no Python frame
    encode = pybase64.b64encode
