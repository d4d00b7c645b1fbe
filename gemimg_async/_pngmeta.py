"""PNG text chunks: written into an image as it streams, and read back.

`PngTagger` sits in a sink's write path: fed the image's bytes as they arrive (split anywhere), it
gives back the same bytes with one `iTXt` chunk per provenance field right after `IHDR`. To know
whether it may, it holds back the bytes from the signature to the header of the first `IDAT`
chunk (typically under 100 bytes; at most `max_hold`, 1 MiB by default): if a `caBX` chunk (a
C2PA manifest, whose signature covers the file's bytes) comes first, or the head is not a PNG's,
or it is longer than that, every byte passes unchanged and `needs_sidecar` says so. It does no
I/O and never re-encodes pixels; after its decision it hands each piece back as it came, no copy.

C2PA recommends `caBX` before `IDAT` but does not require it. A `caBX` found after the image data,
when the chunks were already inserted, sets `tainted`: `tagger.untaint(fd)` (`remove_span`) then
takes the inserted bytes out of the written file again, restoring the relay's bytes exactly.
"""

from __future__ import annotations

import functools
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import attrs

from ._buffers import joined
from ._provenance import Provenance
from ._sizes import Asked

__all__ = [
    "MAX_HOLD",
    "PNG_SIGNATURE",
    "PngTagger",
    "itxt",
    "parse_text",
    "remove_span",
    "scan_png",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_HOLD = 1024 * 1024
"""The most bytes held back while looking for a `caBX` chunk before the image data."""
_IHDR_END = 8 + 8 + 13 + 4  # signature, IHDR's length and type, its 13 bytes, its CRC
_C2PA = b"caBX"
_DATA = frozenset({b"IDAT", b"IEND"})
_TEXT = frozenset({b"iTXt", b"tEXt", b"zTXt"})
_MAX_TEXT = 1024 * 1024
"""Text chunks larger than this (or inflating to more) are skipped when reading."""
_MAX_CHUNK = 2**31 - 1


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
    )


@functools.lru_cache(maxsize=64)  # most fields (model, sizes, second, version) repeat
def itxt(keyword: str, text: str) -> bytes:
    """An uncompressed `iTXt` chunk: a Latin-1 keyword of 1-79 characters, UTF-8 text (NULs,
    which the format forbids, become U+FFFD)."""
    body = text.replace("\x00", "\ufffd").encode("utf-8", "replace")
    return _chunk(b"iTXt", _itxt_head(keyword) + body)


@functools.lru_cache(maxsize=64)  # the same few keywords for every image
def _itxt_head(keyword: str) -> bytes:
    """An `iTXt` chunk's data up to its text: the keyword, checked, and five empty fields."""
    key = keyword.encode("latin-1")
    if not 1 <= len(key) <= 79 or not all(32 <= b <= 126 or b >= 161 for b in key):  # noqa: PLR2004
        raise ValueError(f"not a PNG keyword: {keyword!r}")
    return key + b"\x00\x00\x00\x00\x00"


@attrs.define
class PngTagger:
    """Inserts `iTXt` chunks after a streamed PNG's `IHDR`, unless that would break a C2PA
    signature; see the module docstring. `feed` every piece, then `close`."""

    provenance: Provenance
    asked: Asked | None = None
    """What was asked, to judge the delivered size read from `IHDR`."""
    max_hold: int = MAX_HOLD
    needs_sidecar: bool | None = None
    """None until decided; True when the bytes pass unchanged (the provenance then belongs in a
    sidecar), False once the chunks are in."""
    why: str | None = None
    """Why a sidecar is needed."""
    inserted: tuple[int, int] | None = None
    """(offset, length) of the inserted chunks in the output."""
    tainted: bool = False
    """A `caBX` chunk came after the chunks were inserted: remove `inserted` again."""
    width: int | None = None
    height: int | None = None
    _held: bytes | bytearray = b""
    """The head held back until the verdict: the first piece itself while it is the only one."""
    _skip: int = 0
    """Bytes left of the chunk passing through, once tagged (watching for a late `caBX`)."""
    _header: bytes = b""

    def feed(self, data: bytes) -> bytes:
        """The bytes to write now for `data` (empty while the head is held back)."""
        if self.needs_sidecar is None:
            self._held = joined(self._held, data)
            return self._decide()
        if self.needs_sidecar is False and not self.tainted:
            self._watch(data)
        return data

    @property
    def added(self) -> int:
        """How many bytes the output has beyond the input: the chunks, unless taken out again."""
        return self.inserted[1] if self.inserted is not None else 0

    def untaint(self, fd: int) -> None:
        """Take the inserted chunks out of the written output (the open file `fd`) again when
        `tainted`: the relay's bytes exactly. Then nothing is `inserted`."""
        if self.tainted and self.inserted is not None:
            remove_span(fd, *self.inserted)
            self.inserted = None

    def original(self, output: bytes) -> bytes:
        """The bytes fed, from the whole output: without the inserted chunks."""
        if self.inserted is None:
            return output
        at, length = self.inserted
        return output[:at] + output[at + length :]

    def close(self) -> bytes:
        """The bytes still held: the end of a stream too short to decide on passes unchanged."""
        if self.needs_sidecar is None:
            return self._pass("the PNG ended before its image data")
        return b""

    def _pass(self, why: str) -> bytes:
        self.needs_sidecar, self.why = True, why
        held, self._held = bytes(self._held), b""
        return held

    def _decide(self) -> bytes:  # noqa: PLR0911 - one exit per verdict
        held = self._held
        if not PNG_SIGNATURE.startswith(bytes(held[:8])):
            return self._pass("not a PNG")
        if len(held) < _IHDR_END:
            return b""
        length, kind = struct.unpack_from(">I4s", held, 8)
        if (length, kind) != (13, b"IHDR"):
            return self._pass("the PNG does not start with IHDR")
        self.width, self.height = struct.unpack_from(">II", held, 16)
        pos = _IHDR_END
        while pos + 8 <= len(held):
            length, kind = struct.unpack_from(">I4s", held, pos)
            if kind == _C2PA:
                return self._pass("the PNG carries a C2PA manifest (caBX)")
            if kind in _DATA:
                return self._insert(pos)
            if length > _MAX_CHUNK:
                return self._pass("the PNG has a malformed chunk")
            pos += 12 + length
        if len(held) > self.max_hold:
            return self._pass(f"more than {self.max_hold} bytes before the PNG's image data")
        return b""

    def _insert(self, data_at: int) -> bytes:
        assert self.width is not None
        assert self.height is not None
        provenance = self.provenance.with_size(self.width, self.height, self.asked)
        chunks = b"".join(itxt(k, v) for k, v in provenance.to_fields().items())
        held, self._held = memoryview(self._held), b""
        self.needs_sidecar, self.inserted = False, (_IHDR_END, len(chunks))
        self._watch(held[data_at:])  # from the data chunk on, watching for caBX
        return b"".join((held[:_IHDR_END], chunks, held[_IHDR_END:]))  # one copy

    def _watch(self, data: bytes | memoryview) -> None:
        """Follow chunk boundaries through `data`, flagging a `caBX` chunk."""
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            need = 8 - len(self._header)
            self._header += bytes(data[pos : pos + need])
            pos += min(need, end - pos)
            if len(self._header) == 8:  # noqa: PLR2004
                length, kind = struct.unpack(">I4s", self._header)
                self._header = b""
                self._skip = length + 4
                if kind == _C2PA:
                    self.tainted = True
                    return


def remove_span(fd: int, offset: int, length: int, *, block: int = 1024 * 1024) -> None:
    """Take `length` bytes at `offset` out of the open file `fd`, shifting the rest back and
    truncating it (in place, in blocks of `block` bytes): a tainted tagger's chunks undone."""
    read_at, write_at = offset + length, offset
    while data := os.pread(fd, block, read_at):
        read_at += len(data)
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, write_at)
            write_at += written
            view = view[written:]
    os.ftruncate(fd, write_at)


def parse_text(kind: bytes, data: bytes) -> tuple[str, str] | None:
    """(keyword, text) of a `tEXt`, `zTXt` or `iTXt` chunk's data; None when malformed."""
    key, sep, rest = data.partition(b"\x00")
    if not sep or not key:
        return None
    keyword = key.decode("latin-1")
    try:
        if kind == b"tEXt":
            return keyword, rest.decode("latin-1")
        if kind == b"zTXt":
            return keyword, _inflate(rest[1:]).decode("latin-1")
        compressed, rest = rest[:1] == b"\x01", rest[2:]
        _language, _, rest = rest.partition(b"\x00")
        _translated, _, text = rest.partition(b"\x00")
        return keyword, (_inflate(text) if compressed else text).decode("utf-8", "replace")
    except (zlib.error, ValueError):
        return None


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, _MAX_TEXT)
    if inflater.unconsumed_tail:
        raise ValueError("text chunk too large")
    return out


def scan_png(path: Path) -> tuple[dict[str, str], bool]:
    """A PNG file's text fields (keyword -> text, first of each) and whether it carries a
    `caBX` chunk; reads the chunk headers, seeking past the image data."""
    fields: dict[str, str] = {}
    c2pa = False
    with path.open("rb") as file:
        if file.read(8) != PNG_SIGNATURE:
            return fields, False
        for kind, length in _chunk_headers(file):
            if kind == _C2PA:
                c2pa = True
            if kind in _TEXT and length <= _MAX_TEXT:
                found = parse_text(kind, file.read(length))
                if found is not None:
                    fields.setdefault(*found)
                file.seek(4, os.SEEK_CUR)
            else:
                file.seek(length + 4, os.SEEK_CUR)
    return fields, c2pa


def _chunk_headers(file: BinaryIO) -> Iterator[tuple[bytes, int]]:
    while len(header := file.read(8)) == 8:  # noqa: PLR2004
        length, kind = struct.unpack(">I4s", header)
        yield kind, length
        if kind == b"IEND":
            return
