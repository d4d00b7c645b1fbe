"""Incremental JSON parser that streams the base64 images out of a relay's answer.

`ImageStreamParser` is fed the answer's body chunk by chunk. A `Schema` (each dialect has its
own) names the places where image strings are, and how each is read: raw base64 (a ``data:``
prefix allowed), a URL that may be a ``data:`` URL, or text that may embed ``data:`` URLs (a
Markdown image in a chat answer). Their base64 is decoded while it arrives and handed out from
`feed()` in pieces, keyed by the string's path in the document, so memory per answer stays small
whatever the image size; everything else is parsed as usual and `close()` returns the document,
with a `Diverted` marker where each image string was (a `DivertedText` for text with images).

Hostile answers are bounded: nesting deeper than `max_depth`, more than `max_values` values, or
more than `max_document_bytes` of anything but image data raise `JSONStreamError` at once.

`parse_whole` is the fast path for a small body that arrived whole (a tiny image's answer): one
`json.loads` and one strict base64 decode per image at C speed, giving exactly what the streaming
parser would, or None (then the streaming parser reads the body) whenever it cannot be sure:
anything unusual, invalid, off the limits or merely lenient is left to the streaming parser.
"""

from __future__ import annotations

import binascii
import codecs
import json
import re
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs

from ._base64 import decode_strict

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "ANY_INDEX",
    "BASE64",
    "MARKDOWN",
    "URL_OR_DATA",
    "WHOLE_BODY_BYTES",
    "Diverted",
    "DivertedText",
    "ImageStreamParser",
    "JSONStreamError",
    "JSONTruncatedError",
    "Path",
    "Schema",
    "parse_whole",
]


class JSONStreamError(ValueError):
    """The body is not valid JSON, ended early, or an image string is not valid base64."""


class JSONTruncatedError(JSONStreamError):
    """The body ended before its JSON document did."""


Path: TypeAlias = "tuple[str | int, ...]"
"""Where a value is in a document: object keys and array indices from the top."""

BASE64: Final = 1
"""A string of base64 (a ``data:...,`` prefix allowed): always streamed."""
URL_OR_DATA: Final = 2
"""A URL: streamed when it is a ``data:`` URL, kept as a string otherwise."""
MARKDOWN: Final = 3
"""Text: every ``data:image/...;base64,`` URL in it is streamed, the rest kept."""
ANY_INDEX: Final = -1
"""In a `Schema` pattern, any index of an array."""
_ANY: Final = "\x00any"


@attrs.frozen
class Diverted:
    """Stands in the parsed document where an image string was streamed out instead of kept."""

    path: Path
    """Where the string was; the key of its pieces from `feed()`."""
    size: int
    """Decoded bytes."""


@attrs.frozen
class DivertedText:
    """Stands where a text with embedded images was: the text, each image in it replaced by
    ``gemimg-stream:<k>``, and the images, the k-th at ``path + (k,)``."""

    text: str
    images: tuple[Diverted, ...]


STREAM_REF: Final = "gemimg-stream:"
"""What an image embedded in a text is replaced by in `DivertedText.text`, before its number."""


class Schema:
    """Where a dialect's answers keep image strings, as a tree of keys (and `ANY_INDEX`)."""

    __slots__ = ("children", "mode")

    def __init__(self) -> None:
        self.children: dict[str, Schema] = {}
        self.mode = 0

    @classmethod
    def of(cls, patterns: dict[Path, int]) -> Schema:
        """A schema from `{path pattern: BASE64 | URL_OR_DATA | MARKDOWN}`."""
        root = cls()
        for pattern, mode in patterns.items():
            node = root
            for step in pattern:
                name = _ANY if step == ANY_INDEX else str(step)
                node = node.children.setdefault(name, cls())
            node.mode = mode
        return root

    def child(self, step: str | int) -> Schema | None:
        return self.children.get(_ANY if isinstance(step, int) else step)


_WHITESPACE: Final = re.compile(rb"[ \t\n\r]*+")
_NUMBER_SPAN: Final = re.compile(rb"[-+.eE0-9]*+")
# Complete units of string content; the escapes are checked later by json.loads.
_RAW_SPAN: Final = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)
# Complete units of string content that are valid JSON.
_VALID_SPAN: Final = re.compile(rb'(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+')
_ESCAPE: Final = re.compile(rb'\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})')
_ESCAPE_PREFIX: Final = re.compile(rb"\\(?:u[0-9a-fA-F]{0,3})?")
_LONGEST_PARTIAL_ESCAPE: Final = 5
# Escapes of characters base64 ignores. "\/" is left alone: the alphabet filter drops its
# backslash and keeps the "/".
_IGNORED_ESCAPE: Final = re.compile(rb'\\["\\bfnrt]')
_UNICODE_ESCAPE: Final = re.compile(rb"\\u([0-9a-fA-F]{4})")
_ASCII_END: Final = 0x80
_NOT_ASCII: Final = b"\x80"
_CONTROL_CHARS: Final = bytes(range(0x20))

_B64_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_NOT_B64: Final = bytes(sorted(set(range(256)) - set(_B64_ALPHABET)))
_B64_QUAD: Final = 4
_MIN_PAD_POS: Final = 2

_QUOTE: Final = ord('"')
_EQUALS: Final = ord("=")
_BACKSLASH: Final = ord("\\")
_COMMA: Final = ord(",")
_COLON: Final = ord(":")
_LBRACE: Final = ord("{")
_RBRACE: Final = ord("}")
_LBRACKET: Final = ord("[")
_RBRACKET: Final = ord("]")
_NUMBER_START: Final = frozenset(b"-0123456789")
_NUMBER_CHARS: Final = frozenset(b"-+.eE0123456789")
_LITERALS: Final[dict[int, tuple[bytes, Any]]] = {
    ord("t"): (b"true", True),
    ord("f"): (b"false", False),
    ord("n"): (b"null", None),
}
_BOM: Final = b"\xef\xbb\xbf"

_DATA_URL: Final = "data:"
# Enough raw bytes for any 5 characters: "data:" written as \u escapes is 30 bytes, and a
# mismatch shows by the sixth escape or a surrogate pair at the latest.
_PROBE_LIMIT: Final = 48

_MAX_FAILED_WHOLES: Final = 4
# A data: URL embedded in text, up to the comma before its base64 ("\/" is an escaped "/").
_EMBEDDED: Final = re.compile(
    rb"data:image(?:/|\\/)[a-z0-9.+-]{1,40}(?:;[a-z0-9.+=-]{1,40}){0,4};base64,", re.IGNORECASE
)
_EMBEDDED_HOLD: Final = 160
"""Bytes of text held back while they may be the start of an embedded data: URL."""
_BASE64_FLAGS: Final = bytes(
    int(byte in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    for byte in range(256)
)
"""A translate() table: 1 for a byte of base64's alphabet, 0 for any other."""
DEFAULT_MAX_DOCUMENT_BYTES: Final = 8 * 1024 * 1024
"""Bytes of an answer besides its image data: text, ids, usage. Relays send kilobytes."""
DEFAULT_MAX_DEPTH: Final = 64
DEFAULT_MAX_VALUES: Final = 200_000
"""Values and containers of an answer besides its image data: relays send hundreds."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
WHOLE_BODY_BYTES: Final = 128 * 1024
"""The largest body `parse_whole` takes: under the default limits of values and document bytes
however it is made, so that only its nesting needs checking."""
_JSON_SPACE: Final = b" \t\n\r"


_CONTAINERS: Final = (dict, list)
"""A tuple, not `dict | list`, which makes a new union object each time it is evaluated."""


class _Undecided(Exception):  # noqa: N818 - not an error: the streaming parser decides
    """The fast path cannot tell what the streaming parser would make of a body."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):  # the streaming parser streams the first, json keeps the last
        raise _Undecided
    return found


_WHOLE_DECODER: Final = json.JSONDecoder(
    parse_constant=_reject_constant, object_pairs_hook=_unique_keys
)


def parse_whole(body: bytes, schema: Schema) -> tuple[Any, list[tuple[Path, bytes]]] | None:
    """What `ImageStreamParser(schema)` makes of `body` as a whole, with the default limits:
    `close()`'s document, and each image's bytes in one piece, in order; None when the
    streaming parser must read it (too large, more containers than the nesting limit, a
    byte-order mark, a duplicate key, text with embedded images, base64 that is not strictly
    canonical, an empty image, anything invalid)."""
    if len(body) > WHOLE_BODY_BYTES or body.rstrip(_JSON_SPACE)[-1:] not in (b"}", b"]"):
        return None
    try:
        text = body.decode("utf-8")
        if text.startswith("\ufeff"):
            return None
        document = _WHOLE_DECODER.decode(text)
        pieces: list[tuple[Path, bytes]] = []
        if isinstance(document, _CONTAINERS):
            _divert(document, schema, (), pieces)
    except (ValueError, RecursionError, _Undecided):
        return None
    return document, pieces


def _divert(
    container: dict[str, Any] | list[Any],
    node: Schema,
    path: Path,
    pieces: list[tuple[Path, bytes]],
    depth: int = 1,
) -> None:
    """Replace the image strings in `container` (at `node` of the schema) by
    `Diverted`s, their bytes added to `pieces` in document order, as `ImageStreamParser._place`
    decides; _Undecided past the nesting limit, which the streaming parser reports."""
    if depth > DEFAULT_MAX_DEPTH:
        raise _Undecided
    items = container.items() if isinstance(container, dict) else enumerate(container)
    for step, value in items:
        if isinstance(value, str):
            child = node.child(step)
            if child is None or not child.mode:
                continue
            if child.mode == MARKDOWN:
                raise _Undecided
            where = (*path, step)
            data = _whole_image(value, child.mode)
            if data is not None:
                pieces.append((where, data))
                container[step] = Diverted(where, len(data))  # type: ignore[index]
        elif isinstance(value, _CONTAINERS):
            child = node.child(step)
            if child is not None and child.children:
                _divert(value, child, (*path, step), pieces, depth + 1)
            else:
                _check_nesting(value, depth + 1)


def _check_nesting(container: dict[str, Any] | list[Any], depth: int) -> None:
    """_Undecided if `container` (off the schema: no image is looked for) nests deeper than
    the nesting limit."""
    if depth > DEFAULT_MAX_DEPTH:
        raise _Undecided
    for value in container.values() if isinstance(container, dict) else container:
        if isinstance(value, _CONTAINERS):
            _check_nesting(value, depth + 1)


def _whole_image(value: str, mode: int) -> bytes | None:
    """The bytes of an image string (None: a URL, kept), or _Undecided."""
    head = value[:5]
    if head.isascii() and head.lower() == _DATA_URL:
        comma = value.find(",")
        if comma < 0:
            raise _Undecided
        value = value[comma + 1 :]
    elif mode == URL_OR_DATA:
        return None
    if not value.isascii():
        raise _Undecided
    pad = value.find("=")
    if 0 <= pad < len(value) - 2:  # padding only in the last quad, as the streaming parser wants
        raise _Undecided
    try:
        data = decode_strict(value)  # ASCII str: read as it is
    except binascii.Error:
        raise _Undecided from None
    if not data:
        raise _Undecided
    return data


class _Frame:
    """An open object or array; `node` is its place in the schema (None: off the schema)."""

    __slots__ = ("container", "key", "node", "path")

    def __init__(
        self, container: dict[str, Any] | list[Any], node: Schema | None, path: Path
    ) -> None:
        self.container = container
        self.node = node
        self.path = path
        self.key = ""


def _decode_string(raw: bytes) -> str:
    try:
        text: str = json.loads((b'"' + raw + b'"').decode("utf-8", "surrogatepass"))
    except ValueError as exc:
        raise JSONStreamError(f"invalid JSON string: {exc}") from exc
    return text


def _unescape_char(match: re.Match[bytes]) -> bytes:
    point = int(match.group(1), 16)
    if point == _BACKSLASH:  # never yield a backslash, so that any left over is an error
        return b""
    return bytes((point,)) if point < _ASCII_END else _NOT_ASCII


def _unescape(raw: bytes) -> bytes:
    """Undo the escapes of string content as far as base64 can tell; reject invalid escapes.

    Characters base64 ignores may be dropped, non-ASCII ones become one non-ASCII byte, and
    "\\/" stays as it is (the alphabet filter drops its backslash). A backslash left over
    anywhere else is an invalid escape.
    """
    data = _IGNORED_ESCAPE.sub(b"", raw)
    left = data.count(b"\\")
    if left and left != data.count(b"\\/"):
        data = _UNICODE_ESCAPE.sub(_unescape_char, data)
        if data.count(b"\\") != data.count(b"\\/"):
            raise JSONStreamError("invalid escape in string")
    return data


def _partial_escape_start(raw: bytes) -> int:
    """Where an escape cut off by the end of the chunk starts in ``raw``, else ``len(raw)``."""
    last = raw.rfind(b"\\", max(0, len(raw) - _LONGEST_PARTIAL_ESCAPE))
    if last < 0 or not _ESCAPE_PREFIX.fullmatch(raw, last):
        return len(raw)
    run = last + 1 - len(raw[: last + 1].rstrip(b"\\"))
    return last if run % 2 else len(raw)


class ImageStreamParser:
    """Parse an image-API response body incrementally, streaming the image data out.

    `feed()` each chunk of the body and collect the ``(index, key, data)`` pieces it
    returns; the pieces for one ``(index, key)`` concatenated are the decoded image.
    `close()` returns the document, where each streamed string is a `Diverted`.
    The body must be UTF-8; a leading byte-order mark is skipped. Bytes outside the
    streamed strings count against ``max_document_bytes``.
    """

    def __init__(
        self,
        schema: Schema,
        *,
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_values: int = DEFAULT_MAX_VALUES,
    ) -> None:
        self._schema = schema
        self._max_document_bytes = max_document_bytes
        self._max_depth = max_depth
        self._values_left = max_values
        self._state: Callable[[bytes, int], int] = self._start
        self._stack: list[_Frame] = []
        self._document: Any = None
        self._out: list[tuple[Path, bytes]] = []
        self._offset = 0
        self._diverted_bytes = 0
        self._closed = False
        self._failed = False
        # the token being read outside a streamed string
        self._raw: list[bytes] = []
        self._raw_escape = False
        self._is_key = False
        self._literal = b""
        self._literal_value: Any = None
        self._bom = b""
        # the current chunk as text, for parsing whole values at C speed
        self._text = ""
        self._text_of: bytes | None = None
        self._text_is_ascii = True
        self._failed_wholes = 0
        # the streamed string being read, and where it is
        self._probe = bytearray()
        self._path: Path = ()
        self._mode = 0
        self._prefix: codecs.IncrementalDecoder | None = None
        self._escape = b""
        self._carry = b""
        self._padded = False
        self._size = 0
        # a text with embedded images (MARKDOWN): its text so far, and its images
        self._text_path: Path = ()
        self._kept: list[bytes] = []
        self._held = b""
        self._in_run = False
        self._embedded: list[Diverted] = []

    def feed(self, chunk: bytes) -> list[tuple[Path, bytes]]:
        """Consume the next chunk of the body; return decoded image pieces as (path, data)."""
        self._check_usable()
        out: list[tuple[Path, bytes]] = []
        self._out = out
        self._failed_wholes = 0
        try:
            pos, end = 0, len(chunk)
            while pos < end:
                pos = self._state(chunk, pos)
            self._offset += end
            self._check_size()
        except JSONStreamError:
            self._failed = True
            raise
        finally:
            # hold on to nothing of this chunk: neither its text nor the pieces handed out
            self._text, self._text_of = "", None
            self._out = []
        return out

    def close(self) -> Any:
        """Signal end of body; return the parsed document. JSONStreamError if incomplete/invalid."""
        self._check_usable()
        self._closed = True
        try:
            self._finish_document()
        except JSONStreamError:
            self._failed = True
            raise
        return self._document

    def _finish_document(self) -> None:
        if self._state == self._number:  # a bare top-level number ends with the body
            self._finish_number()
        if self._state != self._done:
            raise JSONTruncatedError(f"body ended early, at byte {self._offset}")
        self._check_size()

    def _check_usable(self) -> None:
        if self._failed:
            raise JSONStreamError("the parser failed earlier")
        if self._closed:
            raise RuntimeError("the parser is closed")

    def _check_size(self) -> None:
        if self._offset - self._diverted_bytes > self._max_document_bytes:
            raise JSONStreamError(
                f"JSON document exceeds {self._max_document_bytes} bytes besides image data"
            )

    def _error(self, message: str, chunk: bytes, pos: int) -> JSONStreamError:
        found = repr(chunk[pos : pos + 1]) if pos < len(chunk) else "end of chunk"
        return JSONStreamError(f"{message} at byte {self._offset + pos}, found {found}")

    # Structure: one state per place in the grammar. A state takes the chunk and a
    # position and returns the position after what it consumed.

    def _start(self, chunk: bytes, pos: int) -> int:
        if chunk[pos] == _BOM[0]:
            self._bom = _BOM[1:]
            self._state = self._skip_bom
            return pos + 1
        self._state = self._value
        return pos

    def _skip_bom(self, chunk: bytes, pos: int) -> int:
        if chunk[pos] != self._bom[0]:
            raise self._error("invalid byte-order mark", chunk, pos)
        self._bom = self._bom[1:]
        if not self._bom:
            self._state = self._value
        return pos + 1

    def _value(self, chunk: bytes, pos: int) -> int:
        pos = _skip_whitespace(chunk, pos)
        if pos == len(chunk):
            return pos
        return self._begin_value(chunk, pos)

    def _begin_value(self, chunk: bytes, pos: int) -> int:
        char = chunk[pos]
        node, path = self._place(char)
        if node is None:
            whole = self._whole(chunk, pos)
            if whole is not None:
                # its containers count too (brackets in its strings as well: a bound, cheaply)
                end = whole[1]
                self._values_left -= chunk.count(b"[", pos, end) + chunk.count(b"{", pos, end)
                self._complete(whole[0])
                return end
        if char == _QUOTE:
            if node is not None and node.mode:
                self._path, self._mode = path, node.mode
                self._state = self._probing if node.mode != MARKDOWN else self._begin_text
            else:
                self._is_key = False
                self._state = self._string
            return pos + 1
        if char in (_LBRACE, _LBRACKET):
            if len(self._stack) >= self._max_depth:
                raise self._error(f"nesting deeper than {self._max_depth}", chunk, pos)
            container: dict[str, Any] | list[Any] = {} if char == _LBRACE else []
            self._stack.append(_Frame(container, node, path))
            self._state = self._first_key if char == _LBRACE else self._first_item
            return pos + 1
        if char in _NUMBER_START:
            self._state = self._number
            return pos
        if char in _LITERALS:
            self._literal, self._literal_value = _LITERALS[char]
            self._state = self._word
            return pos
        raise self._error("expected a JSON value", chunk, pos)

    def _place(self, char: int) -> tuple[Schema | None, Path]:
        """The schema node and path of the value that starts with `char` (None: off schema).

        A key met again in the same object is off the schema: json.loads keeps the last value,
        and only the first is streamed.
        """
        if not self._stack:
            return (self._schema, ()) if char in (_LBRACE, _LBRACKET) else (None, ())
        parent = self._stack[-1]
        if parent.node is None:
            return None, ()
        container = parent.container
        if isinstance(container, dict):
            if parent.key in container:
                return None, ()
            step: str | int = parent.key
        else:
            step = len(container)
        node = parent.node.child(step)
        if node is None or (char == _QUOTE and not node.mode):
            return None, ()
        if char != _QUOTE and not node.children:
            return None, ()
        return node, (*parent.path, step)

    def _whole(self, chunk: bytes, pos: int) -> tuple[Any, int] | None:
        """Parse the value at ``pos`` at C speed if it ends within this chunk."""
        if self._failed_wholes >= _MAX_FAILED_WHOLES:
            return None
        if self._text_of is not chunk:
            # latin-1 keeps byte offsets; a non-ASCII value is decoded again, from UTF-8
            self._text = chunk.decode("latin-1")
            self._text_of = chunk
            self._text_is_ascii = chunk.isascii()
        try:
            value, end = _DECODER.raw_decode(self._text, pos)
        except (ValueError, RecursionError):
            # an incomplete (or invalid) value; looking again costs up to a chunk each time
            self._failed_wholes += 1
            return None
        if chunk[pos] in _NUMBER_START and (end == len(chunk) or chunk[end] in _NUMBER_CHARS):
            return None  # the number may go on in the next chunk, or is invalid
        if not self._text_is_ascii and not chunk[pos:end].isascii():
            try:
                value = _DECODER.decode(chunk[pos:end].decode("utf-8", "surrogatepass"))
            except ValueError as exc:
                raise JSONStreamError(f"invalid UTF-8 in a JSON value: {exc}") from exc
        return value, end

    def _first_key(self, chunk: bytes, pos: int) -> int:
        pos = _skip_whitespace(chunk, pos)
        if pos == len(chunk):
            return pos
        if chunk[pos] == _RBRACE:
            return self._end_container(pos)
        return self._key_string(chunk, pos)

    def _next_key(self, chunk: bytes, pos: int) -> int:
        pos = _skip_whitespace(chunk, pos)
        if pos == len(chunk):
            return pos
        return self._key_string(chunk, pos)

    def _key_string(self, chunk: bytes, pos: int) -> int:
        if chunk[pos] != _QUOTE:
            raise self._error("expected a string key", chunk, pos)
        whole = self._whole(chunk, pos)
        if whole is not None:
            self._stack[-1].key = whole[0]
            self._state = self._colon
            return whole[1]
        self._is_key = True
        self._state = self._string
        return pos + 1

    def _colon(self, chunk: bytes, pos: int) -> int:
        pos = _skip_whitespace(chunk, pos)
        if pos == len(chunk):
            return pos
        if chunk[pos] != _COLON:
            raise self._error("expected ':'", chunk, pos)
        self._state = self._value
        return pos + 1

    def _first_item(self, chunk: bytes, pos: int) -> int:
        pos = _skip_whitespace(chunk, pos)
        if pos == len(chunk):
            return pos
        if chunk[pos] == _RBRACKET:
            return self._end_container(pos)
        return self._begin_value(chunk, pos)

    def _after_value(self, chunk: bytes, pos: int) -> int:
        pos = _skip_whitespace(chunk, pos)
        if pos == len(chunk):
            return pos
        char = chunk[pos]
        is_object = isinstance(self._stack[-1].container, dict)
        if char == _COMMA:
            self._state = self._next_key if is_object else self._value
            return pos + 1
        if char == (_RBRACE if is_object else _RBRACKET):
            return self._end_container(pos)
        raise self._error("expected ',' or the end of the container", chunk, pos)

    def _end_container(self, pos: int) -> int:
        self._complete(self._stack.pop().container)
        return pos + 1

    def _done(self, chunk: bytes, pos: int) -> int:
        pos = _skip_whitespace(chunk, pos)
        if pos < len(chunk):
            raise self._error("extra data after the JSON document", chunk, pos)
        return pos

    def _complete(self, value: Any) -> None:
        """Place a finished value in its container, or finish the document."""
        self._values_left -= 1
        if self._values_left < 0:
            raise JSONStreamError("the document holds too many values to be an answer")
        if not self._stack:
            self._document = value
            self._state = self._done
            return
        frame = self._stack[-1]
        if isinstance(frame.container, dict):
            frame.container[frame.key] = value
        else:
            frame.container.append(value)
        self._state = self._after_value

    # Tokens outside streamed strings.

    def _string(self, chunk: bytes, pos: int) -> int:
        if self._raw_escape:
            self._raw.append(chunk[pos : pos + 1])
            self._raw_escape = False
            pos += 1
        end = _raw_end(chunk, pos)
        if end == len(chunk):
            self._raw.append(chunk[pos:end])
            return end
        if chunk[end] == _QUOTE:
            self._raw.append(chunk[pos:end])
            self._finish_string()
            return end + 1
        # a backslash at the very end of the chunk: its escaped character comes next
        self._raw.append(chunk[pos : end + 1])
        self._raw_escape = True
        return end + 1

    def _finish_string(self) -> None:
        text = _decode_string(b"".join(self._raw))
        self._raw = []
        if self._is_key:
            self._stack[-1].key = text
            self._state = self._colon
        else:
            self._complete(text)

    def _number(self, chunk: bytes, pos: int) -> int:
        end = _match_end(_NUMBER_SPAN, chunk, pos)
        self._raw.append(chunk[pos:end])
        if end < len(chunk):
            self._finish_number()
        return end

    def _finish_number(self) -> None:
        raw = b"".join(self._raw)
        self._raw = []
        try:
            value = json.loads(raw.decode("ascii"))
        except ValueError as exc:
            raise JSONStreamError(f"invalid JSON number {raw[:40]!r}") from exc
        self._complete(value)

    def _word(self, chunk: bytes, pos: int) -> int:
        got = chunk[pos : pos + len(self._literal)]
        if not self._literal.startswith(got):
            raise self._error("invalid literal", chunk, pos)
        self._literal = self._literal[len(got) :]
        if not self._literal:
            self._complete(self._literal_value)
        return pos + len(got)

    # Streamed strings.

    def _probing(self, chunk: bytes, pos: int) -> int:
        """Read an image string's first characters, to see whether it is a data: URL."""
        probe = self._probe
        while pos < len(chunk):
            char = chunk[pos]
            pos += 1
            if char == _QUOTE and _RAW_SPAN.fullmatch(probe):
                self._probe_ended()
                return pos
            probe.append(char)
            is_data_url = self._probe_verdict()
            if is_data_url is not None:
                self._probe_decided(is_data_url=is_data_url)
                return pos
        return pos

    def _probe_verdict(self) -> bool | None:
        if len(self._probe) > _PROBE_LIMIT:
            return False
        if not _VALID_SPAN.fullmatch(self._probe):
            return None
        try:
            head = _decode_string(bytes(self._probe))[: len(_DATA_URL)]
        except JSONStreamError:  # a partial UTF-8 character
            return None
        if not (head.isascii() and _DATA_URL.startswith(head.lower())):
            return False
        return True if len(head) == len(_DATA_URL) else None

    def _probe_decided(self, *, is_data_url: bool) -> None:
        probe = bytes(self._probe)
        self._probe.clear()
        if is_data_url or self._mode == BASE64:
            self._begin_stream(is_data_url=is_data_url)
            self._stream(probe, 0)
            self._state = self._stream
        else:
            self._raw = [probe]
            self._raw_escape = not _RAW_SPAN.fullmatch(probe)
            self._is_key = False
            self._state = self._string

    def _probe_ended(self) -> None:
        probe = bytes(self._probe)
        self._probe.clear()
        if self._mode == BASE64:
            self._begin_stream(is_data_url=False)
            self._stream(probe + b'"', 0)
        else:
            self._complete(_decode_string(probe))

    def _begin_stream(self, *, is_data_url: bool) -> None:
        self._prefix = (
            codecs.getincrementaldecoder("utf-8")("surrogatepass") if is_data_url else None
        )
        self._escape = b""
        self._carry = b""
        self._padded = False
        self._size = 0

    def _stream(self, chunk: bytes, pos: int) -> int:
        """Read on in a streamed string: the hot path, a few C-speed passes per chunk."""
        start = pos
        if self._escape:
            pos = self._continue_escape(chunk, pos)
            if self._escape:
                self._diverted_bytes += pos - start
                return pos
        end = chunk.find(b'"', pos)
        if end > pos and chunk[end - 1] == _BACKSLASH:  # maybe an escaped quote: let re decide
            end = _raw_end(chunk, pos)
            if end == len(chunk) or chunk[end] != _QUOTE:
                end = -1
        if end < 0:
            raw = chunk[pos:]
            cut = _partial_escape_start(raw)
            if cut < len(raw):
                self._escape, raw = raw[cut:], raw[:cut]
            if raw:
                self._take(raw)
            self._diverted_bytes += len(chunk) - start
            return len(chunk)
        if end > pos:
            self._take(chunk[pos:end])
        self._finish_stream()
        self._diverted_bytes += end + 1 - start
        return end + 1

    def _continue_escape(self, chunk: bytes, pos: int) -> int:
        escape = self._escape
        while pos < len(chunk):
            escape += chunk[pos : pos + 1]
            pos += 1
            if _ESCAPE.fullmatch(escape):
                self._escape = b""
                self._take(escape)
                return pos
            if not _ESCAPE_PREFIX.fullmatch(escape):
                raise self._error("invalid escape in string", chunk, pos - 1)
        self._escape = escape
        return pos

    def _take(self, raw: bytes) -> None:
        """Decode a stretch of a streamed string's content that ends between characters."""
        if self._prefix is None and not self._padded and self._take_clean(raw):
            return
        others = raw.translate(None, _B64_ALPHABET)
        data = raw
        if others:
            if len(others.translate(None, _CONTROL_CHARS)) != len(others):
                raise JSONStreamError("control character in string")
            if _BACKSLASH in others:
                data = _unescape(raw)
        if self._prefix is not None:
            try:
                self._prefix.decode(raw)
            except UnicodeDecodeError as exc:
                raise JSONStreamError(f"invalid UTF-8 in data: URL: {exc}") from exc
            comma = data.find(b",")
            if comma < 0:
                return
            self._prefix = None
            data = data[comma + 1 :]
            others = b","
        if others:
            if not data.isascii():
                raise JSONStreamError(
                    f"non-ASCII character in base64 image data ({_where(self._path)})"
                )
            data = data.translate(None, _NOT_B64)
        self._decode(data)

    def _take_clean(self, raw: bytes) -> bool:
        """The common case in one C pass: whole quads of plain base64, unpadded. False, with
        nothing consumed, for anything else (escapes, whitespace, padding, other characters)."""
        buf = self._carry + raw if self._carry else raw
        cut = len(buf) - len(buf) % _B64_QUAD
        if not cut or buf[cut - 1] == _EQUALS or buf[cut:].translate(None, _B64_ALPHABET):
            return False  # the tail carried over must be plain base64 too
        try:
            piece = decode_strict(buf[:cut])
        except binascii.Error:
            return False
        self._carry = buf[cut:]
        self._size += len(piece)
        self._out.append((self._path, piece))
        return True

    def _decode(self, b64: bytes) -> None:
        if not b64:
            return
        if self._padded:
            raise JSONStreamError(
                f"base64 image data continues after its padding ({_where(self._path)})"
            )
        buf = self._carry + b64 if self._carry else b64
        cut = len(buf) - len(buf) % _B64_QUAD
        self._carry = buf[cut:]
        if not cut:
            return
        quads = buf[:cut]
        pad = quads.find(b"=")
        if pad >= 0:
            quad_start = pad - pad % _B64_QUAD
            if (
                pad - quad_start < _MIN_PAD_POS
                or quad_start + _B64_QUAD != cut
                or quads[pad:] != b"=" * (cut - pad)
            ):
                raise JSONStreamError(
                    f"misplaced padding in base64 image data ({_where(self._path)})"
                )
            self._padded = True
        try:
            piece = binascii.a2b_base64(quads)
        except binascii.Error as exc:
            raise JSONStreamError(
                f"invalid base64 image data ({_where(self._path)}): {exc}"
            ) from exc
        if piece:
            self._size += len(piece)
            self._out.append((self._path, piece))

    def _finish_stream(self) -> None:
        if self._prefix is not None:
            raise JSONStreamError(f"data: URL without a comma ({_where(self._path)})")
        if self._carry:
            raise JSONStreamError(
                f"base64 image data is truncated or badly padded ({_where(self._path)}): "
                f"{len(self._carry)} characters left over"
            )
        diverted = Diverted(self._path, self._size)
        if self._mode == MARKDOWN:
            self._embedded.append(diverted)
            self._kept.append(f"{STREAM_REF}{len(self._embedded) - 1}".encode())
            self._in_run = False
        else:
            self._complete(diverted)

    # Texts with embedded images (MARKDOWN).

    def _begin_text(self, chunk: bytes, pos: int) -> int:
        del chunk  # nothing read yet
        self._text_path = self._path
        self._kept, self._held, self._in_run, self._embedded = [], b"", False, []
        self._raw_escape = False
        self._state = self._text_content
        return pos

    def _text_content(self, chunk: bytes, pos: int) -> int:
        """Read on in a text: the kept text, the embedded images streamed out."""
        lead = b""
        if self._raw_escape:  # the character of an escape the last chunk ended in
            lead, pos, self._raw_escape = chunk[pos : pos + 1], pos + 1, False
        end = _raw_end(chunk, pos)
        closing = end < len(chunk) and chunk[end] == _QUOTE
        if end < len(chunk) and not closing:  # a backslash at the very end of the chunk
            end += 1
            self._raw_escape = True
        self._scan(self._held + lead + chunk[pos:end], final=closing)
        if not closing:
            return end
        text = _decode_string(b"".join(self._kept))
        self._kept = []
        self._complete(DivertedText(text, tuple(self._embedded)) if self._embedded else text)
        return end + 1

    def _scan(self, buf: bytes, *, final: bool) -> None:
        """Sort `buf`, text content that ends between escapes, into kept text and image data;
        hold back (unless `final`) what may be the start of an embedded data: URL."""
        self._held = b""
        i = 0
        flags = b""  # buf translated by _BASE64_FLAGS, once a run needs it
        while i < len(buf) or (final and self._in_run):
            if self._in_run:
                flags = flags or buf.translate(_BASE64_FLAGS)
                end = _run_end(buf, flags, i)
                if buf[i:end]:
                    self._take(buf[i:end])
                    self._diverted_bytes += end - i
                if not final and (end == len(buf) or buf[end:] == b"\\"):
                    self._held = buf[end:]  # the run may go on, with an escaped "/" maybe
                    return
                self._finish_stream()
                i = end
                continue
            match = _EMBEDDED.search(buf, i)
            if match is None:
                cut = len(buf) if final else _held_from(buf, i)
                self._kept.append(buf[i:cut])
                self._held = buf[cut:]
                return
            self._kept.append(buf[i : match.start()])
            self._path = (*self._text_path, len(self._embedded))
            self._begin_stream(is_data_url=False)
            self._in_run = True
            i = match.end()


def _held_from(buf: bytes, start: int) -> int:
    """Where the tail of `buf` that may begin an embedded data: URL starts (`len(buf)`: none)."""
    window_start = max(start, len(buf) - _EMBEDDED_HOLD)
    window = buf[window_start:].lower()
    at = window.rfind(b"data:")
    if at >= 0:
        return window_start + at
    for n in range(min(len(_DATA_URL) - 1, len(window)), 0, -1):
        if _DATA_URL.encode().startswith(window[-n:]):
            return len(buf) - n
    return len(buf)


def _where(path: Path) -> str:
    """`data[0].b64_json` for the path ("data", 0, "b64_json")."""
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)[1:]


def _raw_end(chunk: bytes, pos: int) -> int:
    """Where the raw content of a JSON string that goes on at `pos` stops: at its closing quote,
    at a backslash that ends the chunk, or at the chunk's end (as `_RAW_SPAN` would match, but
    with find(), which runs at memchr speed where re walks a character at a time)."""
    size = len(chunk)
    quote = chunk.find(b'"', pos)
    if quote < 0:
        quote = size
    while (backslash := chunk.find(b"\\", pos, quote)) >= 0:
        if backslash + 1 == size:
            return backslash
        pos = backslash + 2
        if pos > quote:  # the quote was escaped
            quote = chunk.find(b'"', pos)
            if quote < 0:
                quote = size
    return quote


def _run_end(buf: bytes, flags: bytes, pos: int) -> int:
    """Where the run of base64 (escaped slashes "\\/" included) that goes on at `pos` stops;
    `flags` is `buf` translated by `_BASE64_FLAGS`."""
    while (end := flags.find(0, pos)) >= 0:
        if buf[end : end + 2] != b"\\/":
            return end
        pos = end + 2
    return len(buf)


def _match_end(pattern: re.Pattern[bytes], chunk: bytes, pos: int) -> int:
    match = pattern.match(chunk, pos)
    return match.end() if match else pos


def _skip_whitespace(chunk: bytes, pos: int) -> int:
    return _match_end(_WHITESPACE, chunk, pos)
