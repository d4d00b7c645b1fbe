"""Bytes that arrive in pieces, gathered without copying a lone first piece."""

from __future__ import annotations

__all__ = ["joined"]


def joined(pending: bytes | bytearray, data: bytes | bytearray) -> bytes | bytearray:
    """`pending` with `data` after it: `data` itself (bytes) when nothing is pending, else
    appended in place to a bytearray made at the second piece. A small image, which comes in
    one piece, is never copied."""
    if not pending:
        return data if type(data) is bytes else bytes(data)
    if type(pending) is bytes:
        pending = bytearray(pending)
    pending += data
    return pending
