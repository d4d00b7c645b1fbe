"""The streaming JSON parser: exact JSON semantics, base64 images streamed out, bounded memory."""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import os
import random
import re
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gemimg_async._dialects import ChatDialect, GeminiDialect, ImagesDialect
from gemimg_async._jsonstream import (
    _BASE64_FLAGS,
    _RAW_SPAN,
    STREAM_REF,
    WHOLE_BODY_BYTES,
    Diverted,
    DivertedText,
    ImageStreamParser,
    JSONStreamError,
    JSONTruncatedError,
    _raw_end,
    _run_end,
    parse_whole,
)

IMAGES = ImagesDialect().schema  # $.data[i].b64_json and .url, and $.data as one object

SETTINGS = settings(
    deadline=None,
    database=None,
    max_examples=250,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PNG_PREFIX = "data:image/png;base64,"
CHUNK = 64 * 1024


# A random JSON encoder: the same value written in many valid ways.

WHITESPACE = ["", "", " ", "  ", "\n", "\t", "\r\n", " \n\t "]
SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


class RandomEncoder:
    """Writes JSON with random whitespace, key order, escapes and number spelling."""

    def __init__(
        self, rnd: random.Random, *, ensure_ascii: bool, escape_rate: float, space_rate: float
    ) -> None:
        self.rnd = rnd
        self.ensure_ascii = ensure_ascii
        self.escape_rate = escape_rate
        self.space_rate = space_rate
        self.escape_slash = rnd.random() < 0.5

    def ws(self) -> str:
        return self.rnd.choice(WHITESPACE) if self.rnd.random() < self.space_rate else ""

    def value(self, value: Any) -> str:
        if value is None or isinstance(value, bool):
            return json.dumps(value)
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            text = repr(value)
            return text.replace("e", "E") if self.rnd.random() < 0.5 else text
        if isinstance(value, str):
            return self.string(value)
        if isinstance(value, list):
            items = [self.ws() + self.value(item) + self.ws() for item in value]
            return "[" + (",".join(items) if items else self.ws()) + "]"
        pairs = list(value.items())
        self.rnd.shuffle(pairs)
        members = [
            self.ws() + self.string(k) + self.ws() + ":" + self.ws() + self.value(v) + self.ws()
            for k, v in pairs
        ]
        return "{" + (",".join(members) if members else self.ws()) + "}"

    def string(self, text: str) -> str:
        return '"' + "".join(self.char(ch) for ch in text) + '"'

    def char(self, ch: str) -> str:
        code = ord(ch)
        must_escape = ch in SHORT_ESCAPES or code < 0x20 or (self.ensure_ascii and code > 0x7E)
        if must_escape or self.rnd.random() < self.escape_rate:
            if ch in SHORT_ESCAPES and self.rnd.random() < 0.5:
                return SHORT_ESCAPES[ch]
            if ch == "/" and self.rnd.random() < 0.5:
                return "\\/"
            return self.u_escape(code)
        if ch == "/" and self.escape_slash:
            return "\\/"
        return ch

    def u_escape(self, code: int) -> str:
        spell = self.rnd.choice(["\\u{:04x}", "\\u{:04X}"])
        if code > 0xFFFF:
            code -= 0x10000
            return spell.format(0xD800 + (code >> 10)) + spell.format(0xDC00 + (code & 0x3FF))
        return spell.format(code)


@st.composite
def encodings(draw: st.DrawFn, value: Any) -> bytes:
    encoder = RandomEncoder(
        draw(st.randoms(use_true_random=False)),
        ensure_ascii=draw(st.booleans()),
        escape_rate=draw(st.sampled_from([0.0, 0.0, 0.05, 0.3, 1.0])),
        space_rate=draw(st.sampled_from([0.0, 0.3, 1.0])),
    )
    return (encoder.ws() + encoder.value(value) + encoder.ws()).encode()


@st.composite
def chunkings(draw: st.DrawFn, body: bytes) -> list[bytes]:
    mode = draw(st.sampled_from(["bytes", "random", "random", "whole"]))
    if mode == "bytes":
        return [body[i : i + 1] for i in range(len(body))]
    if mode == "whole":
        return [body]
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=30)))
    return [body[a:b] for a, b in itertools.pairwise([0, *cuts, len(body)])]


SPECIAL_KEYS = st.sampled_from(["data", "b64_json", "url", "created", "x"])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(SPECIAL_KEYS | st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


def extra_fields(*reserved: str) -> st.SearchStrategy[dict[str, Any]]:
    keys = (SPECIAL_KEYS | st.text(max_size=10)).filter(lambda key: key not in reserved)
    return st.dictionaries(keys, json_values, max_size=3)


# ASCII characters outside the base64 alphabet, which b64decode skips.
NOISE = st.sampled_from(' "\\\t\b\f\x00\x7f!#*,-.:;<>?@[]^_{|}~')


@st.composite
def base64_values(draw: st.DrawFn) -> str:
    """Base64 of random bytes, possibly wrapped into lines or sprinkled with skipped characters."""
    text = base64.b64encode(draw(st.binary(max_size=120))).decode()
    wrap = draw(st.sampled_from(["", "", "\n", "\r\n", " "]))
    if wrap:
        width = draw(st.integers(1, 80))
        text = wrap.join(text[i : i + width] for i in range(0, len(text), width))
    for _ in range(draw(st.sampled_from([0, 0, 3, 20]))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(NOISE) + text[at:]
    return text


@st.composite
def image_items(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["b64_json", "b64_json", "data_url", "https", "null", "other"]))
    if kind == "other":
        value = draw(json_values)
        if isinstance(value, dict):
            value.pop("b64_json", None)
            value.pop("url", None)
        return value
    item = draw(extra_fields("b64_json", "url"))
    if kind == "b64_json":
        item["b64_json"] = draw(st.sampled_from(["", PNG_PREFIX])) + draw(base64_values())
        sibling = draw(st.sampled_from(["absent", "empty", "null"]))
        if sibling != "absent":
            item["url"] = "" if sibling == "empty" else None
    elif kind == "data_url":
        item["url"] = PNG_PREFIX + draw(base64_values())
    elif kind == "https":
        item["url"] = "https://x/y.png"
    else:
        item["b64_json"] = None
    return item


@st.composite
def image_documents(draw: st.DrawFn) -> dict[str, Any]:
    document = draw(extra_fields("created", "data"))
    document["created"] = draw(st.integers(0, 2**40))
    document["data"] = draw(st.lists(image_items(), max_size=4))
    return document


def parse(chunks: list[bytes], **options: Any) -> tuple[Any, dict[tuple, bytes]]:
    """Feed the chunks; return the document and the concatenated pieces per path."""
    parser = ImageStreamParser(IMAGES, **options)
    pieces: dict[tuple, bytearray] = {}
    for chunk in chunks:
        for path, data in parser.feed(chunk):
            assert data, "pieces are never empty"
            pieces.setdefault(path, bytearray()).extend(data)
    return parser.close(), {place: bytes(data) for place, data in pieces.items()}


def expected(body: bytes) -> tuple[Any, dict[tuple, bytes]]:
    """json.loads(body), with each image string decoded and replaced by its Diverted."""
    document = json.loads(body)
    images: dict[tuple, bytes] = {}
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        return document, images
    for index, item in enumerate(document["data"]):
        if not isinstance(item, dict):
            continue
        for key in ("b64_json", "url"):
            value = item.get(key)
            if not isinstance(value, str) or (key == "url" and not value.startswith("data:")):
                continue
            if value.startswith("data:"):
                value = value.partition(",")[2]
            images["data", index, key] = base64.b64decode(value)
            item[key] = Diverted(("data", index, key), len(images["data", index, key]))
    return document, images


def check(chunks: list[bytes]) -> None:
    document, images = expected(b"".join(chunks))
    got_document, got_images = parse(chunks)
    assert got_images == {place: data for place, data in images.items() if data}
    assert got_document == document


# Properties.


@SETTINGS
@given(st.data())
def test_random_image_documents(data: st.DataObject) -> None:
    """Any valid encoding of a response, chunked anyhow, yields json.loads' document and images."""
    body = data.draw(image_documents().flatmap(encodings))
    check(data.draw(chunkings(body)))


@SETTINGS
@given(st.data())
def test_arbitrary_json_round_trips(data: st.DataObject) -> None:
    """A document without an image array parses exactly as json.loads does, chunked anyhow."""
    value = data.draw(json_values)
    if isinstance(value, dict):
        value.pop("data", None)
    body = data.draw(encodings(value))
    assert parse(data.draw(chunkings(body)))[0] == json.loads(body)


# Examples.

ESCAPED_BODY = (
    b'\xef\xbb\xbf {"created": 1700000000, "data": [\r\n'
    b'  {"revised_prompt": "caf\xc3\xa9 \\ud83d\\ude00 \\"q\\" \xf0\x9f\x98\x80",\n'
    b'   "b64_json": "\\u0064ata:image\\/png;base64\\u002cQU\\\\JD\\nRE\\"VG\\\\u0041AAA'
    b'\\r\\n\\u005cR0g\\b\\f\\t\\u003d", "url": null},\n'
    b'  {"url": "data:image/png;base64,SGVsbG8=", "n": [-0, 1.5e+3, 2E-2, true, false, null]},\n'
    b'  {"url": "https://example.com/a.png"}\n'
    b"]}\n"
)


def test_escapes_split_at_every_byte_boundary() -> None:
    """A response full of escapes, split in two at every byte boundary, parses the same way."""
    for cut in range(len(ESCAPED_BODY) + 1):
        check([ESCAPED_BODY[:cut], ESCAPED_BODY[cut:]])


def test_escaped_response_values() -> None:
    """Escaped prefixes are stripped, images decoded, other values kept as json.loads has them."""
    document, images = parse([ESCAPED_BODY])
    image = b"ABCDEF" + base64.b64decode("u0041AAA") + b"GH"
    assert images == {("data", 0, "b64_json"): image, ("data", 1, "url"): b"Hello"}
    assert document["data"][0] == {
        "revised_prompt": 'café 😀 "q" 😀',
        "b64_json": Diverted(("data", 0, "b64_json"), len(image)),
        "url": None,
    }
    assert document["data"][1]["url"] == Diverted(("data", 1, "url"), 5)
    assert document["data"][2] == {"url": "https://example.com/a.png"}


def test_empty_and_null_image_strings() -> None:
    """An empty image string yields no pieces and a zero-size Diverted; null stays None."""
    body = b'{"data": [{"b64_json": ""}, {"b64_json": null}, {"url": "data:image/png;base64,"}]}'
    document, images = parse([body])
    assert images == {}
    assert document == {
        "data": [
            {"b64_json": Diverted(("data", 0, "b64_json"), 0)},
            {"b64_json": None},
            {"url": Diverted(("data", 2, "url"), 0)},
        ]
    }


def test_pieces_come_in_order_per_image() -> None:
    """Pieces of each image arrive in order; images follow each other; each piece is non-empty."""
    first, second = bytes(range(256)) * 40, b"\x89PNG" * 3000
    body = json.dumps(
        {"data": [{"b64_json": base64.b64encode(p).decode()} for p in (first, second)]}
    ).encode()
    parser = ImageStreamParser(IMAGES)
    pieces = [piece for i in range(0, len(body), 1000) for piece in parser.feed(body[i : i + 1000])]
    assert len(pieces) > 2
    assert all(data for _, data in pieces)
    assert [path for path, _ in pieces] == sorted(path for path, _ in pieces)
    assert b"".join(d for path, d in pieces if path[1] == 0) == first
    assert b"".join(d for path, d in pieces if path[1] == 1) == second
    assert parser.close()["data"][1] == {"b64_json": Diverted(("data", 1, "b64_json"), len(second))}


@pytest.mark.parametrize(
    "body",
    [
        b'{"images": {"b64_json": "QUJD"}}',
        b'{"b64_json": "QUJD", "url": "data:,QUJD"}',
        b'{"outer": {"data": [{"b64_json": "QUJD"}]}}',
        b'[{"data": [{"b64_json": "QUJD"}]}]',
        b'{"data": [[{"b64_json": "QUJD"}]]}',
        b'{"data": [{"nested": {"b64_json": "QUJD"}}]}',
        b'{"data": [{"url": "https://x/y.png", "URL": "data:,QUJD"}]}',
    ],
)
def test_other_shapes_are_kept_whole(body: bytes) -> None:
    """Image strings anywhere but $.data[i] (or $.data as one object) stay in the document."""
    document, images = parse([body])
    assert images == {}
    assert document == json.loads(body)


def test_data_as_one_object_is_streamed_as_image_0() -> None:
    """A relay that answers "data": {...} for its one image is streamed at data.b64_json."""
    body = b'{"created": 1, "data": {"b64_json": "QUJD", "revised_prompt": "p"}}'
    document, images = parse([body[i : i + 3] for i in range(0, len(body), 3)])
    assert images == {("data", "b64_json"): b"ABC"}
    assert document == {
        "created": 1,
        "data": {"b64_json": Diverted(("data", "b64_json"), 3), "revised_prompt": "p"},
    }


def test_a_body_cut_short_is_a_truncation() -> None:
    """A body that ends inside its document raises JSONTruncatedError, a JSONStreamError."""
    parser = ImageStreamParser(IMAGES)
    parser.feed(b'{"data": [{"b64_json": "QUJ')
    with pytest.raises(JSONTruncatedError):
        parser.close()


def test_duplicate_keys_divert_only_the_first() -> None:
    """A repeated "data" or image key is kept as json.loads keeps it: the last one wins."""
    body = b'{"data": [{"b64_json": "QUJD", "b64_json": "REVG"}], "data": [{"b64_json": "R0hJ"}]}'
    document, images = parse([body])
    assert images == {("data", 0, "b64_json"): b"ABC"}
    assert document == json.loads(body)


def test_data_url_scheme_is_case_insensitive() -> None:
    """A url starting with DATA: is streamed like data:, since URL schemes ignore case."""
    document, images = parse([b'{"data": [{"url": "DATA:image/png;base64,QUJD"}]}'])
    assert images == {("data", 0, "url"): b"ABC"}
    assert document == {"data": [{"url": Diverted(("data", 0, "url"), 3)}]}


@pytest.mark.parametrize(
    "body",
    [
        *[b"0", b"-0", b"-12.5e-3", b"1E+400", b"123456789012345678901234567890", b" 7 "],
        *[b'"\\u00e9\\ud83d\\ude00\xf0\x9f\x98\x80"', b"true", b"null", b"[]", b"{}", b'""'],
    ],
)
def test_top_level_scalars_and_numbers(body: bytes) -> None:
    """Top-level scalars, including a bare number ended only by the body, match json.loads."""
    assert parse([body[i : i + 1] for i in range(len(body))])[0] == json.loads(body)


# Errors.


def test_truncated_body_raises_at_every_cut() -> None:
    """A body cut short anywhere raises JSONStreamError, from feed() or from close()."""
    body = (
        b'{"created": 12, "data": [{"b64_json": "QUJDREVG", "url": "data:,QUJD"},'
        b' {"x": [1.5, true, null, "a\\u00e9\\n"]}]}'
    )
    parse([body])
    for cut in range(len(body)):
        with pytest.raises(JSONStreamError):
            parse([body[:cut]])


INVALID_JSON = [
    b"",
    b"   ",
    b'{"a": 1} x',
    b'{"a": 1}{}',
    b'{"a": 1 "b": 2}',
    b"[1 2]",
    b"[1,]",
    b'{"a": 1,}',
    b"[,1]",
    b"hello",
    b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    b'{"a": tru}',
    b'{"a": True}',
    b'{"a": nulls}',
    b"NaN",
    b"-Infinity",
    b'{"a": 01}',
    b'{"a": 1.}',
    b'{"a": .5}',
    b'{"a": +1}',
    b'{"a": 1e}',
    b'{"a": --1}',
    b"{a: 1}",
    b"{'a': 1}",
    b'{"a" 1}',
    b'{"a": }',
    b"}",
    b"]",
    b"[}",
    b'{"a": [1}',
    b'{"a": "\x01"}',
    b'{"a": "\\x"}',
    b'{"a": "\\u12G4"}',
    b'{"a": "\xff"}',
    b'{"a": "\xc3"}',
    b'\xef\xbb{"a": 1}',
    b' \xef\xbb\xbf{"a": 1}',
    b'{"data": [{"b64_json": "QUJD\x01"}]}',
    b'{"data": [{"b64_json": "QU\\xJD"}]}',
    b'{"data": [{"b64_json": "QUJD\\u00"}]}',
    b'{"data": [{"b64_json": "QUJD"]}',
    b'{"data": [{"url": "data:image/\xffpng;base64,QUJD"}]}',
    b'{"data": [{"url": "data:image/png;base64,QUJD\x1f"}]}',
    b'{"data": [{"url": "https://x/\\q"}]}',
]


@pytest.mark.parametrize("body", INVALID_JSON)
def test_invalid_json_raises(body: bytes) -> None:
    """Bodies that are not one valid JSON text raise JSONStreamError, whole or byte by byte."""
    for chunks in ([body], [body[i : i + 1] for i in range(len(body))]):
        with pytest.raises(JSONStreamError):
            parse(chunks)


@pytest.mark.parametrize(
    ("value", "b64decode_accepts"),
    [
        ("QUJDR", False),  # one character more than a multiple of 4
        ("QUJDRA", False),  # missing padding
        ("QUJDRA=", False),  # short padding
        ("QQ==QUJD", True),  # b64decode stops at the padding and drops the rest
        ("QQ==\\nQUJD", True),
        ("QQ===", True),  # excess padding
        ("QQ======", True),
        ("Q===", False),  # padding where no group can end
        ("====", True),
        ("=QUJD", True),
        ("QUJD\\u00e9", False),  # not ASCII
        ("QUJD\xc3\xa9", False),
        ("data:image/png;base64", False),  # a data: URL without its comma
    ],
)
def test_invalid_base64_raises(value: str, b64decode_accepts: bool) -> None:
    """Invalid base64 raises JSONStreamError, even where b64decode would silently drop data."""
    body = b'{"data": [{"b64_json": "' + value.encode("latin-1") + b'"}]}'
    decoded = json.loads(body.decode("utf-8"))["data"][0]["b64_json"]
    try:
        base64.b64decode(decoded)
    except (binascii.Error, ValueError):
        assert not b64decode_accepts
    else:
        assert b64decode_accepts
    for chunks in ([body], [body[i : i + 1] for i in range(len(body))]):
        with pytest.raises(JSONStreamError):
            parse(chunks)


def test_max_document_bytes_counts_kept_content_only() -> None:
    """Kept content beyond max_document_bytes raises; streamed image data does not count."""
    image = base64.b64encode(bytes(300_000))
    small = b'{"data": [{"b64_json": "' + image + b'"}], "note": "' + b"x" * 100 + b'"}'
    _, images = parse(
        [small[i : i + 4096] for i in range(0, len(small), 4096)], max_document_bytes=200
    )
    assert images == {("data", 0, "b64_json"): bytes(300_000)}
    large = b'{"images": {"b64_json": "' + image + b'"}}'
    with pytest.raises(JSONStreamError, match="exceeds"):
        parse([large[i : i + 4096] for i in range(0, len(large), 4096)], max_document_bytes=200)


def test_failed_parser_stays_failed_and_closed_parser_refuses_input() -> None:
    """After an error every call raises again; feeding after close() is a RuntimeError."""
    parser = ImageStreamParser(IMAGES)
    with pytest.raises(JSONStreamError):
        parser.feed(b"{]")
    with pytest.raises(JSONStreamError):
        parser.feed(b"}")
    with pytest.raises(JSONStreamError):
        parser.close()
    parser = ImageStreamParser(IMAGES)
    parser.feed(b"{}")
    assert parser.close() == {}
    with pytest.raises(RuntimeError):
        parser.feed(b" ")


# Bounded memory.


@pytest.mark.parametrize("wrap", [b"", b"\\r\\n"])
def test_memory_stays_bounded_for_a_large_image(wrap: bytes) -> None:
    """A ~30 MB image string streams in 64 KiB chunks with small, constant parser state."""
    payload = os.urandom(22 * 1024 * 1024)
    digest = hashlib.sha256(payload).digest()
    text = base64.b64encode(payload)
    del payload
    if wrap:
        text = wrap.join(text[i : i + 76] for i in range(0, len(text), 76))
    body = b'{"created": 1700000000, "data": [{"b64_json": "' + text + b'"}]}'
    del text
    parser = ImageStreamParser(IMAGES)
    received = hashlib.sha256()
    size = 0
    tracemalloc.start()
    try:
        for offset in range(0, len(body), CHUNK):
            for _, data in parser.feed(body[offset : offset + CHUNK]):
                received.update(data)
                size += len(data)
            assert len(parser._carry) < 4
            assert len(parser._escape) < 6
            assert not parser._raw
            assert len(parser._probe) == 0
            assert not parser._text
            assert not parser._out
        document = parser.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received.digest() == digest
    assert document == {
        "created": 1700000000,
        "data": [{"b64_json": Diverted(("data", 0, "b64_json"), size)}],
    }
    assert peak < 2 * 1024 * 1024


# --- schemas of the other dialects: paths, texts with embedded images -------------------------

CHAT = ChatDialect().schema
GEMINI = GeminiDialect().schema


def parse_with(schema, chunks):
    """Feed `chunks` to a parser of `schema`; the document and the pieces per path."""
    parser = ImageStreamParser(schema)
    pieces: dict[tuple, bytearray] = {}
    for chunk in chunks:
        for path, data in parser.feed(chunk):
            pieces.setdefault(path, bytearray()).extend(data)
    return parser.close(), {path: bytes(data) for path, data in pieces.items()}


@st.composite
def markdown_texts(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    """A chat text with Markdown images as data: URLs among other text, and their bytes."""
    images = draw(st.lists(st.binary(min_size=1, max_size=300), min_size=0, max_size=3))
    words = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
    pieces = [draw(words)]
    for data in images:
        kind = draw(st.sampled_from(["png", "jpeg", "webp"]))
        alt = draw(st.sampled_from(["image", "", "draft 1"]))
        pieces.append(f"![{alt}](data:image/{kind};base64,{base64.b64encode(data).decode()})")
        pieces.append(draw(words))
    return draw(st.sampled_from(["\n", " ", ""])).join(pieces), images


@settings(SETTINGS, max_examples=100)
@given(st.data())
def test_markdown_images_stream_out_of_any_chunking(data: st.DataObject) -> None:
    """Every data: URL in a chat text streams out whole under its path, in order, however the
    body is cut and its slashes escaped; the text keeps the rest, images as gemimg-stream:<k>."""
    text, images = data.draw(markdown_texts())
    body = json.dumps(
        {"choices": [{"message": {"content": text}}]}, ensure_ascii=data.draw(st.booleans())
    ).encode()
    if data.draw(st.booleans()):  # relays that escape every "/"
        body = body.replace(b"/", b"\\/")
    document, pieces = parse_with(CHAT, data.draw(chunkings(body)))
    content = document["choices"][0]["message"]["content"]
    path = ("choices", 0, "message", "content")
    if not images:
        assert content == text
        return
    assert isinstance(content, DivertedText)
    assert [pieces[(*path, k)] for k in range(len(images))] == images
    assert [d.size for d in content.images] == [len(i) for i in images]
    assert content.text.count(STREAM_REF) == len(images)
    assert re.sub(r"data:image/\w+;base64,[A-Za-z0-9+/=]*", "", text) == re.sub(
        rf"{STREAM_REF}\d+", "", content.text
    )


def test_markdown_with_escaped_slashes_and_a_split_prefix() -> None:
    """A data: URL written with \\/ escapes, cut inside its prefix, still streams."""
    payload = base64.b64encode(bytes(range(256)) * 4).decode().replace("/", "\\/")
    body = (
        '{"choices":[{"message":{"content":"look ![image](data:image\\/png;base64,'
        + payload
        + ') done"}}]}'
    ).encode()
    for cut in range(1, 80):
        document, pieces = parse_with(CHAT, [body[:cut], body[cut:]])
        assert pieces == {("choices", 0, "message", "content", 0): bytes(range(256)) * 4}
        text = document["choices"][0]["message"]["content"].text
        assert text == f"look ![image]({STREAM_REF}0) done"


def test_text_that_only_looks_like_a_data_url_is_kept() -> None:
    """ "data:" followed by no image stays text; nothing streams."""
    body = b'{"choices":[{"message":{"content":"see data:text/plain,hello and data: nothing"}}]}'
    document, pieces = parse_with(CHAT, [body[:30], body[30:]])
    assert pieces == {}
    assert (
        document["choices"][0]["message"]["content"]
        == "see data:text/plain,hello and data: nothing"
    )


def test_chat_image_lists_stream_under_their_paths() -> None:
    """message.images[i].image_url.url data: URLs stream; an https URL stays a string."""
    body = json.dumps(
        {
            "choices": [
                {
                    "message": {
                        "images": [
                            {"image_url": {"url": "data:image/png;base64,QUJD"}},
                            {"image_url": {"url": "https://example.com/x.png"}},
                        ]
                    }
                }
            ]
        }
    ).encode()
    document, pieces = parse_with(CHAT, [body])
    assert pieces == {("choices", 0, "message", "images", 0, "image_url", "url"): b"ABC"}
    assert (
        document["choices"][0]["message"]["images"][1]["image_url"]["url"]
        == "https://example.com/x.png"
    )


def test_gemini_inline_data_streams_whatever_the_key_order() -> None:
    """parts[i].inlineData.data streams, with "thought" before or after it kept as it is."""
    parts = [
        {"inlineData": {"mimeType": "image/png", "data": "QUJD"}, "thought": True},
        {"thought": True, "inline_data": {"mime_type": "image/png", "data": "REVG"}},
        {"text": "here"},
        {"inlineData": {"data": "R0hJ", "mimeType": "image/png"}},
    ]
    body = json.dumps({"candidates": [{"content": {"parts": parts}}]}).encode()
    document, pieces = parse_with(GEMINI, [body[i : i + 7] for i in range(0, len(body), 7)])
    base = ("candidates", 0, "content", "parts")
    assert pieces == {
        (*base, 0, "inlineData", "data"): b"ABC",
        (*base, 1, "inline_data", "data"): b"DEF",
        (*base, 3, "inlineData", "data"): b"GHI",
    }
    assert document["candidates"][0]["content"]["parts"][0]["thought"] is True


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"[" * 2000 + b"]" * 2000, "nesting deeper"),
        (b'{"a": [' + b"{}," * 300_000 + b"{}]}", "too many values"),
        (b'{"a": "' + b"x" * (9 * 1024 * 1024) + b'"}', "exceeds"),
    ],
)
def test_hostile_documents_fail_fast(body: bytes, match: str) -> None:
    """Deep nesting, floods of values and huge non-image strings raise at once."""
    chunks = [body[start : start + 65536] for start in range(0, len(body), 65536)]
    with pytest.raises(JSONStreamError, match=match):
        parse(chunks)


_RUN_PATTERN = re.compile(rb"(?:[A-Za-z0-9+/=]++|\\/)*+")
_JSONISH = st.binary(max_size=64) | st.lists(
    st.sampled_from([b"a", b"Z", b"9", b"+", b"/", b"=", b'"', b"\\", b"\\/", b'\\"', b" ", b"!"]),
    max_size=40,
).map(b"".join)


@SETTINGS
@given(_JSONISH, st.integers(min_value=0, max_value=64))
def test_the_string_scan_stops_where_a_regular_expression_would(chunk, pos):
    """_raw_end finds a string's end (a quote, or a backslash that ends the chunk) as re would."""
    pos = min(pos, len(chunk))
    expected = _RAW_SPAN.match(chunk, pos)
    assert _raw_end(chunk, pos) == (expected.end() if expected else pos)


@SETTINGS
@given(_JSONISH, st.integers(min_value=0, max_value=64))
def test_the_base64_run_scan_stops_where_a_regular_expression_would(buf, pos):
    """_run_end finds where embedded base64 (escaped slashes included) stops, as re would."""
    pos = min(pos, len(buf))
    expected = _RUN_PATTERN.match(buf, pos)
    flags = buf.translate(_BASE64_FLAGS)
    assert _run_end(buf, flags, pos) == (expected.end() if expected else pos)


# The fast path for small bodies that arrive whole (`parse_whole`).


def streamed_whole(body: bytes, schema: Any = IMAGES) -> tuple[Any, list[tuple[tuple, bytes]]]:
    """The streaming parser's document and image pieces (one per image, in order) for `body`
    fed in one chunk."""
    parser = ImageStreamParser(schema)
    pieces: dict[tuple, bytearray] = {}
    for path, data in parser.feed(body):
        pieces.setdefault(path, bytearray()).extend(data)
    return parser.close(), [(path, bytes(data)) for path, data in pieces.items()]


def agrees(body: bytes, schema: Any = IMAGES) -> bool:
    """parse_whole gives what the streaming parser gives, or None; True when it decided."""
    whole = parse_whole(body, schema)
    try:
        streamed = streamed_whole(body, schema)
    except JSONStreamError:
        assert whole is None, body[:200]
        return False
    if whole is not None:
        assert whole == streamed, body[:200]
    return whole is not None


@SETTINGS
@given(st.data())
def test_the_fast_path_agrees_with_the_streaming_parser(data: st.DataObject) -> None:
    """parse_whole of any encoding of a response is the streaming parser's result, or None."""
    agrees(data.draw(image_documents().flatmap(encodings)))


@pytest.mark.parametrize(
    "body",
    [
        *INVALID_JSON,
        *(
            b'{"data": [{"b64_json": "' + value.encode() + b'"}]}'
            for value in ("QQ==QUJD", "QQ===", "QUJD====", "====", "=QUJD", "QUJD\\n", "", "QUJ")
        ),
        b'{"data": [{"b64_json": "QUJD", "b64_json": "REVG"}]}',
        b'{"data": [{"b64_json": "QUJD"}]} x',
        b'{"data": [{"b64_json": NaN}]}',
        b'\xef\xbb\xbf{"data": [{"b64_json": "QUJD"}]}',
        b'{"data": [{"url": "data:image/png;base64"}]}',
        b"[" * 65 + b"]" * 65,
        b'{"a": "' + b"x" * (WHOLE_BODY_BYTES + 1) + b'"}',
    ],
)
def test_the_fast_path_leaves_the_unusual_to_the_streaming_parser(body: bytes) -> None:
    """Invalid, lenient, duplicated, too deep or too large bodies get None from parse_whole
    (the streaming parser then reads them), never a different answer."""
    assert not agrees(body)


def test_the_fast_path_takes_nesting_up_to_the_limit_and_many_shallow_containers() -> None:
    """Containers nested 64 deep, or a hundred side by side, are read whole, as the streaming
    parser reads them; 65 deep is left to it (it refuses)."""
    assert agrees(b"[" * 64 + b"]" * 64)
    assert agrees(b'{"data": [' + b", ".join([b'{"b64_json": "QUJD"}'] * 100) + b"]}")
    assert not agrees(b'{"a": ' + b"[" * 64 + b"]" * 64 + b"}")


GEMINI_INLINE = (
    b'{"candidates": [{"content": {"parts": [{"text": "hi"}, '
    b'{"inlineData": {"mimeType": "image/png", "data": "QUJD"}}]}}]}'
)


@pytest.mark.parametrize(
    ("schema", "body"),
    [
        (IMAGES, b'{"created": 1, "data": [{"b64_json": "QUJD"}, {"url": "https://x/y.png"}]}'),
        (IMAGES, b' {"data": [{"url": "DATA:image/png;base64,QUJD", "b64_json": null}]}\n'),
        (IMAGES, b'{"data": [{"b64_json": "QU\\/D\\u0041BCD"}], "usage": {"total_tokens": 7}}'),
        (IMAGES, b'{"data": {"b64_json": "QUJDRA=="}}'),
        (GeminiDialect().schema, GEMINI_INLINE),
    ],
)
def test_the_fast_path_takes_ordinary_small_answers(schema: Any, body: bytes) -> None:
    """Ordinary answers (plain base64, data: URLs, escaped slashes, URLs kept, Gemini's inline
    data) are parsed by the fast path, exactly as the streaming parser does."""
    assert agrees(body, schema)


def test_the_fast_path_leaves_chat_text_to_the_streaming_parser() -> None:
    """A chat answer's text (images embedded in Markdown) always goes to the streaming parser."""
    body = b'{"choices": [{"message": {"content": "![x](data:image/png;base64,QUJD)"}}]}'
    assert parse_whole(body, ChatDialect().schema) is None
