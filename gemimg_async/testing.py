"""A fake relay for tests, demos and benchmarks: a real HTTP server on the current event loop.

`FakeRelay` speaks the relay API (``POST /v1/images/generations``) on 127.0.0.1, answers with real
PNG images sized like the real tiers, serves ``url`` answers from ``GET /files/<token>.png``, and
records every request. `Fault` values scripted with `FakeRelay.script` (generations) and
`FakeRelay.script_download` (file downloads) make the next requests misbehave the way relays do:
error statuses, dropped connections, truncated bodies, slow answers, odd answer shapes.

Use it in your own tests, offline (with an ``anyio_backend`` fixture returning ``"asyncio"``)::

    import pytest
    from gemimg_async.testing import FakeRelay, Fault

    @pytest.mark.anyio
    async def test_my_app_survives_a_rate_limit():
        async with FakeRelay() as relay:
            relay.script(Fault.rate_limited("1"))
            await my_app.make_poster(base_url=relay.url, api_key="sk-test")
            assert [r.status for r in relay.requests] == [429, 200]
            assert relay.downloads[0].authorization is None

Order of work for a generation request: the next scripted fault is taken when the request arrives
(whatever the request turns out to be); ``Fault.reset(after_body=False)`` acts at once; the body is
read; ``Fault.reset()`` acts; a missing or wrong key answers 401 and an invalid body 400, at once;
everything else first waits ``latency`` (plus a ``Fault.delay``), then answers as the fault says.

`FakeClock` (re-exported from the client's clock module) makes the client's waits instant.

Images are cached per process by (size, style, palette), bounded by bytes; rendering and base64
encoding run in a worker thread so the event loop does not stall on a 4K image.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import colorsys
import hashlib
import http
import json
import math
import random
import re
import secrets
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Self, get_args

import anyio
import attrs
from aiohttp import web

from ._clock import FakeClock
from ._models import ASPECT_RATIOS

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "MODELS",
    "QUIRKS",
    "RATIOS",
    "FakeClock",
    "FakeRelay",
    "Fault",
    "Quirk",
    "RecordedDownload",
    "RecordedRequest",
    "pixel_size",
    "png",
    "serve",
]

#: The models the fake relay accepts, with the long side of their images in pixels.
MODELS: Mapping[str, int] = {
    "gemini-3-pro-image-preview": 1024,
    "gemini-3-pro-image-preview-2k": 2048,
    "gemini-3-pro-image-preview-4k": 4096,
}
#: The aspect ratios the fake relay accepts as ``size`` (``W:H``; ``WxH`` is accepted too).
RATIOS: tuple[str, ...] = ASPECT_RATIOS
Quirk = Literal[
    "both_fields",
    "null_sibling",
    "data_uri_in_url",
    "data_prefix_b64",
    "b64_when_url_asked",
    "escaped_slashes",
    "wrapped_b64",
]
#: The answer shapes `Fault.quirk` knows.
QUIRKS: tuple[Quirk, ...] = get_args(Quirk)

_FaultKind = Literal[
    "status",
    "reset",
    "truncate",
    "delay",
    "html",
    "error_body",
    "refusal",
    "fewer_images",
    "quirk",
]
_DOWNLOAD_KINDS: frozenset[_FaultKind] = frozenset({"status", "reset", "truncate", "delay", "html"})

_STANDARD_LONG_SIDE = 1024
_MAX_N = 4
_MAX_INPUT_IMAGES = 14
_MAX_INLINE_IMAGE_BYTES = 7 * 1024 * 1024
_MAX_BODY_BYTES = 256 * 1024 * 1024
_SLICE = 1024 * 1024
_SHUTDOWN_TIMEOUT = 0.25
_BACKLOG = 1024
_CACHE_BYTES = 384 * 1024 * 1024
_PALETTES = 36
_DATA_URI = re.compile(r"data:image/(?:png|jpeg|webp|gif);base64,(.*)", re.DOTALL)
_PLACEHOLDER = "@@GEMIMG-FAKE-IMAGE@@"
_FILE_SUFFIX = ".png"
_REQUEST_ID: web.RequestKey[str] = web.RequestKey("gemimg_fake_request_id", str)


def pixel_size(model: str, size: str = "1:1") -> tuple[int, int]:
    """Return the (width, height) the fake relay answers for *model* and ratio *size*."""
    width, height = _parse_ratio(size)
    long_side = MODELS.get(model, _STANDARD_LONG_SIDE)
    if width >= height:
        return long_side, round(long_side * height / width)
    return round(long_side * width / height), long_side


def _parse_ratio(size: str) -> tuple[int, int]:
    normal = size.strip().lower().replace("x", ":")
    if normal not in RATIOS:
        raise ValueError(f"size must be one of {', '.join(RATIOS)}, got {size!r}")
    width, height = normal.split(":")
    return int(width), int(height)


# --- faults ------------------------------------------------------------------------------------


@attrs.frozen
class Fault:
    """One scripted misbehaviour, consumed by exactly one request. Build it with a constructor."""

    kind: _FaultKind
    status_code: int = 200
    message: str = ""
    error_code: str | int | None = None
    retry_after: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    as_html: bool = False
    after_body: bool = True
    fraction: float = 0.5
    seconds: float = 0.0
    count: int = 0
    quirk_name: Quirk | None = None

    @classmethod
    def status(
        cls,
        code: int,
        *,
        message: str | None = None,
        code_field: str | int | None = None,
        retry_after: str | float | None = None,
        headers: Mapping[str, str] | None = None,
        html: bool = False,
    ) -> Self:
        """Answer HTTP *code* with the usual error JSON (or an HTML error page)."""
        if not 400 <= code <= 599:  # noqa: PLR2004
            raise ValueError(f"an error status is 400-599, got {code}")
        return cls(
            kind="status",
            status_code=code,
            message=message if message is not None else _phrase(code),
            error_code=code_field,
            retry_after=None if retry_after is None else str(retry_after),
            headers=tuple((headers or {}).items()),
            as_html=html,
        )

    @classmethod
    def rate_limited(cls, retry_after: str | float | None = None) -> Self:
        """Answer 429, with ``Retry-After: <retry_after>`` when given."""
        return cls.status(
            429,
            message="Rate limit reached, please try again later",
            code_field="rate_limit_exceeded",
            retry_after=retry_after,
        )

    @classmethod
    def server_error(cls, code: int = 500) -> Self:
        """Answer a 5xx status with an upstream-trouble message."""
        if not 500 <= code <= 599:  # noqa: PLR2004
            raise ValueError(f"a server error is 500-599, got {code}")
        return cls.status(code, message="Upstream service error, please retry later")

    @classmethod
    def reset(cls, *, after_body: bool = True) -> Self:
        """Drop the connection without answering (after reading the body, or before).

        aiohttp retries a GET once after a dropped connection: script two to fail a download.
        """
        return cls(kind="reset", after_body=after_body)

    @classmethod
    def truncate(cls, fraction: float = 0.5) -> Self:
        """Answer 200 with the full Content-Length, send *fraction* of the body, hang up."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction is in [0, 1), got {fraction}")
        return cls(kind="truncate", fraction=fraction)

    @classmethod
    def delay(cls, seconds: float) -> Self:
        """Wait *seconds* more before answering normally."""
        if not seconds >= 0.0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        return cls(kind="delay", seconds=seconds)

    @classmethod
    def html(cls) -> Self:
        """Answer 200 with a ``text/html`` page instead of what was asked."""
        return cls(kind="html")

    @classmethod
    def error_body(cls, message: str, code: str | int | None = "upstream_error") -> Self:
        """Answer HTTP 200 with ``{"error": {"message": ..., "code": ...}}``."""
        return cls(kind="error_body", message=message, error_code=code)

    @classmethod
    def refusal(cls) -> Self:
        """Answer HTTP 200 with no images: ``{"created": ..., "data": []}``."""
        return cls(kind="refusal")

    @classmethod
    def fewer_images(cls, count: int) -> Self:
        """Answer at most *count* images, whatever ``n`` asked."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        return cls(kind="fewer_images", count=count)

    @classmethod
    def quirk(cls, name: Quirk) -> Self:
        """Answer normally, shaped like a known relay variant (one of `QUIRKS`)."""
        if name not in QUIRKS:
            raise ValueError(f"quirk must be one of {', '.join(QUIRKS)}, got {name!r}")
        return cls(kind="quirk", quirk_name=name)


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Error"


# --- records -----------------------------------------------------------------------------------


@attrs.frozen
class RecordedRequest:
    """One generation request as the relay saw it.

    Body fields are None when not sent (or of the wrong type); ``status`` is None while the request
    is being handled and when no status line went out (a reset, or the client hung up first).
    """

    request_id: str
    started: float
    authorized: bool = False
    headers: Mapping[str, str] = attrs.field(factory=dict)
    idempotency_key: str | None = None
    model: str | None = None
    prompt: str | None = None
    size: str | None = None
    n: int | None = None
    response_format: str | None = None
    images: tuple[str, ...] = ()
    fault: Fault | None = None
    status: int | None = None
    finished: float | None = None

    @property
    def image_count(self) -> int:
        """How many input images the request carried."""
        return len(self.images)


@attrs.frozen
class RecordedDownload:
    """One file download as the image host saw it."""

    request_id: str
    path: str
    started: float
    authorization: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    fault: Fault | None = None
    status: int | None = None
    finished: float | None = None


class _Aborted(Exception):  # noqa: N818 - a signal, not an error
    """The handler dropped the connection on purpose."""


# --- PNG images --------------------------------------------------------------------------------


@attrs.frozen
class _ImageKey:
    width: int
    height: int
    style: Literal["gradient", "noise"]
    palette: int


@attrs.define
class _Rendered:
    png: bytes
    b64: bytes | None = None


class _ImageCache:
    """A least-recently-used cache of rendered images, bounded by (estimated) bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._items: collections.OrderedDict[_ImageKey, _Rendered] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _ImageKey) -> _Rendered | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: _ImageKey, value: _Rendered) -> _Rendered:
        with self._lock:
            value = self._items.setdefault(key, value)
            self._items.move_to_end(key)
            total = sum(_footprint(v) for v in self._items.values())
            while total > self._max_bytes and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                total -= _footprint(evicted)
            return value


def _footprint(rendered: _Rendered) -> int:
    return len(rendered.png) * 7 // 3  # the PNG plus its base64


_CACHE = _ImageCache(_CACHE_BYTES)


async def _image(key: _ImageKey) -> _Rendered:
    found = _CACHE.get(key)
    if found is None:
        found = _CACHE.put(key, _Rendered(await asyncio.to_thread(_render, key)))
    return found


async def _b64(rendered: _Rendered) -> bytes:
    if rendered.b64 is None:
        rendered.b64 = await asyncio.to_thread(base64.b64encode, rendered.png)
    return rendered.b64


def _render(key: _ImageKey) -> bytes:
    if key.style == "noise":
        return _noise_png(key.width, key.height)
    return _gradient_png(key.width, key.height, key.palette)


def png(width: int = 3, height: int = 2, colour: tuple[int, int, int] = (128, 128, 128)) -> bytes:
    """A valid RGB PNG of one colour: an input image for your tests."""
    return _png(width, height, zlib.compress((b"\x00" + bytes(colour) * width) * height))


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


def _palette(prompt: str, index: int) -> int:
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
    return (int.from_bytes(digest[:4], "big") + index * 7) % _PALETTES


# --- validation --------------------------------------------------------------------------------


class _Invalid(Exception):  # noqa: N818 - a 400 answer, raised to keep validation linear
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen
class _Generation:
    model: str
    prompt: str
    width: int
    height: int
    n: int
    response_format: Literal["url", "b64_json"]


def _validate(body: Any, models: frozenset[str]) -> _Generation:  # noqa: C901, PLR0912
    if not isinstance(body, dict):
        raise _Invalid("invalid_json", "The request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        raise _Invalid("missing_model", "You must provide a model parameter.")
    if not isinstance(model, str) or model not in models:
        raise _Invalid("invalid_model", f"The model {model!r} does not exist.")
    prompt = body.get("prompt")
    if prompt is None:
        raise _Invalid("missing_prompt", "You must provide a prompt parameter.")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _Invalid("invalid_prompt", "prompt must be a non-empty string.")
    size = body.get("size")
    try:
        width, height = pixel_size(model, "1:1" if size is None else size)
    except (ValueError, AttributeError):
        raise _Invalid("invalid_size", f"size must be one of {', '.join(RATIOS)}.") from None
    response_format = body.get("response_format")
    if response_format is None:
        response_format = "url"
    if response_format not in ("url", "b64_json"):
        raise _Invalid("invalid_response_format", "response_format must be 'url' or 'b64_json'.")
    answer: Literal["url", "b64_json"] = "url" if response_format == "url" else "b64_json"
    n = body.get("n")
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= _MAX_N:
        raise _Invalid("invalid_n", f"n must be an integer from 1 to {_MAX_N}.")
    images = body.get("image")
    if images is not None:
        images = [images] if isinstance(images, str) else images
        if not isinstance(images, list):
            raise _Invalid("invalid_image", "image must be a string or an array of strings.")
        if len(images) > _MAX_INPUT_IMAGES:
            raise _Invalid("too_many_images", f"At most {_MAX_INPUT_IMAGES} input images.")
        for image in images:
            _validate_image(image)
    return _Generation(model, prompt, width, height, n, answer)


def _validate_image(image: Any) -> None:
    if not isinstance(image, str):
        raise _Invalid("invalid_image", "Each image must be a string.")
    if image.startswith("data:"):
        match = _DATA_URI.fullmatch(image)
        if match is None:
            raise _Invalid(
                "invalid_image", "A data URI must be data:image/<png|jpeg|webp|gif>;base64,..."
            )
        try:
            decoded = binascii.a2b_base64(match.group(1), strict_mode=True)
        except binascii.Error:
            raise _Invalid("invalid_image", "The data URI holds invalid base64.") from None
        if not decoded:
            raise _Invalid("invalid_image", "The data URI holds no data.")
        if len(decoded) > _MAX_INLINE_IMAGE_BYTES:
            raise _Invalid("image_too_large", "An inline image may be at most 7 MB.")
        return
    parts = urllib.parse.urlsplit(image)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _Invalid("invalid_image", "Each image must be an http(s) URL or a data URI.")


# --- answers -----------------------------------------------------------------------------------


def _error_json(message: str, code: str | int | None, type_: str) -> bytes:
    error = {"message": message, "type": type_, "code": code}
    return json.dumps({"error": error}, ensure_ascii=False).encode()


def _error_type(status: int) -> str:
    if status == http.HTTPStatus.TOO_MANY_REQUESTS:
        return "rate_limit_error"
    if status >= http.HTTPStatus.INTERNAL_SERVER_ERROR:
        return "server_error"
    return "invalid_request_error"


def _html_page(status: int) -> bytes:
    title = f"{status} {_phrase(status)}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


async def _send(
    request: web.Request,
    status: int,
    content_type: str,
    parts: Sequence[bytes],
    *,
    headers: Iterable[tuple[str, str]] = (),
    truncate: float | None = None,
) -> web.StreamResponse:
    """Stream *parts* in slices of at most 1 MiB, or only *truncate* of them, then hang up."""
    total = sum(len(part) for part in parts)
    response = web.StreamResponse(status=status)
    for name, value in headers:
        response.headers[name] = value
    response.content_type = content_type
    response.content_length = total
    await response.prepare(request)
    limit = total if truncate is None else math.floor(total * truncate)
    sent = 0
    for part in parts:
        view = memoryview(part)
        for start in range(0, len(view), _SLICE):
            piece = view[start : start + min(_SLICE, limit - sent)]
            if not piece:
                break
            await response.write(piece)
            sent += len(piece)
    if truncate is None:
        await response.write_eof()
    else:
        await response.write(b"")  # sends the headers if no body went out
        _hang_up(request, abort=False)
    return response


def _hang_up(request: web.Request, *, abort: bool) -> None:
    transport = request.transport
    if transport is not None:
        if abort:
            transport.abort()
        else:
            transport.close()  # flushes what was written, then closes


# --- the relay ---------------------------------------------------------------------------------


def _keys(value: Iterable[str]) -> frozenset[str]:
    return frozenset({value}) if isinstance(value, str) else frozenset(value)


def _hidden_keys(keys: frozenset[str]) -> str:
    return f"<{len(keys)} keys>"


def _check_latency(_: object, __: object, value: float | Mapping[str, float]) -> None:
    values = value.values() if isinstance(value, Mapping) else [value]
    if any(not v >= 0 for v in values):
        raise ValueError(f"latency must be >= 0, got {value!r}")


@attrs.frozen
class _File:
    key: _ImageKey
    expires_at: float


@attrs.define(eq=False)
class FakeRelay:
    """A fake relay on the current event loop: ``async with FakeRelay() as relay: relay.url``."""

    api_keys: frozenset[str] = attrs.field(
        default=frozenset({"sk-test"}), converter=_keys, repr=_hidden_keys
    )
    host: str = "127.0.0.1"
    port: int = 0
    latency: float | Mapping[str, float] = attrs.field(default=0.0, validator=_check_latency)
    url_ttl: float = 86_400.0
    image_style: Literal["gradient", "noise"] = attrs.field(
        default="gradient", validator=attrs.validators.in_(("gradient", "noise"))
    )
    extra_models: frozenset[str] = attrs.field(default=frozenset(), converter=_keys)

    requests: list[RecordedRequest] = attrs.field(init=False, factory=list, repr=False)
    downloads: list[RecordedDownload] = attrs.field(init=False, factory=list, repr=False)
    _faults: collections.deque[Fault] = attrs.field(
        init=False, factory=collections.deque, repr=False
    )
    _download_faults: collections.deque[Fault] = attrs.field(
        init=False, factory=collections.deque, repr=False
    )
    _files: dict[str, _File] = attrs.field(init=False, factory=dict, repr=False)
    _in_flight: int = attrs.field(init=False, default=0, repr=False)
    _max_in_flight: int = attrs.field(init=False, default=0, repr=False)
    _epoch: int = attrs.field(init=False, default=0, repr=False)
    _runner: web.AppRunner | None = attrs.field(init=False, default=None, repr=False)
    _url: str | None = attrs.field(init=False, default=None, repr=False)

    # lifecycle

    async def start(self) -> None:
        """Bind the socket and start answering."""
        if self._runner is not None:
            raise RuntimeError("the fake relay is already started")
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_post("/v1/images/generations", self._handle_generation)
        app.router.add_get("/files/{name}", self._handle_download, allow_head=False)
        app.on_response_prepare.append(self._stamp_request_id)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            sock = socket.create_server((self.host, self.port), backlog=_BACKLOG)
            try:
                await web.SockSite(runner, sock, backlog=_BACKLOG).start()
            except BaseException:
                sock.close()
                raise
        except BaseException:
            await runner.cleanup()
            raise
        host, port = sock.getsockname()[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self._runner = runner

    async def aclose(self) -> None:
        """Stop answering; requests still being handled are cancelled shortly after."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def url(self) -> str:
        """The base URL, like ``http://127.0.0.1:PORT`` (no ``/v1``)."""
        if self._url is None:
            raise RuntimeError("the fake relay is not started")
        return self._url

    # scripting

    def script(self, *faults: Fault) -> None:
        """Queue *faults* for the next generation requests, one each, in order."""
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"expected a Fault, got {fault!r}")
        self._faults.extend(faults)

    def script_download(self, *faults: Fault) -> None:
        """Queue *faults* for the next file downloads, one each, in order."""
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"expected a Fault, got {fault!r}")
            if fault.kind not in _DOWNLOAD_KINDS:
                raise ValueError(f"a {fault.kind} fault does not apply to downloads")
        self._download_faults.extend(faults)

    def expire_files(self) -> None:
        """Make every file URL handed out so far answer 410 Gone."""
        for token, file in self._files.items():
            self._files[token] = attrs.evolve(file, expires_at=-math.inf)

    def reset(self) -> None:
        """Forget scripts, records, counters and files, as if freshly started."""
        self._epoch += 1
        self._faults.clear()
        self._download_faults.clear()
        self.requests.clear()
        self.downloads.clear()
        self._files.clear()
        self._max_in_flight = self._in_flight

    # observing

    @property
    def in_flight(self) -> int:
        """Generation requests being handled right now (latency included)."""
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most generation requests handled at once since start or `reset`."""
        return self._max_in_flight

    @property
    def generation_count(self) -> int:
        """Generation requests received since start or `reset`."""
        return len(self.requests)

    @property
    def download_count(self) -> int:
        """File downloads received since start or `reset`."""
        return len(self.downloads)

    @property
    def pending_faults(self) -> int:
        """Scripted generation faults not consumed yet."""
        return len(self._faults)

    @property
    def pending_download_faults(self) -> int:
        """Scripted download faults not consumed yet."""
        return len(self._download_faults)

    # handlers

    async def _stamp_request_id(self, request: web.Request, response: web.StreamResponse) -> None:
        request_id = request.get(_REQUEST_ID) or _new_request_id()
        response.headers.setdefault("x-request-id", request_id)

    def _latency(self, model: str) -> float:
        if isinstance(self.latency, Mapping):
            return self.latency.get(model, 0.0)
        return self.latency

    async def _handle_generation(self, request: web.Request) -> web.StreamResponse:
        request[_REQUEST_ID] = request_id = _new_request_id()
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)
        fault = self._faults.popleft() if self._faults else None
        presented = _bearer(request)
        record = RecordedRequest(
            request_id=request_id,
            started=time.monotonic(),
            authorized=presented in self.api_keys,
            headers=_scrubbed_headers(request, {presented, *self.api_keys}),
            idempotency_key=request.headers.get("Idempotency-Key"),
            fault=fault,
        )
        epoch, index = self._epoch, len(self.requests)
        self.requests.append(record)
        status: int | None = None
        try:
            response = await self._answer_generation(request, record, fault, epoch, index)
            status = response.status
        except (_Aborted, ConnectionError):  # we hung up, or the client did: nothing to log
            return web.Response(status=499)  # never sent: the transport is gone
        else:
            return response
        finally:
            self._in_flight -= 1
            current = self._record_at(epoch, index)
            if current is not None:
                self.requests[index] = attrs.evolve(
                    current, status=status, finished=time.monotonic()
                )

    def _record_at(self, epoch: int, index: int) -> RecordedRequest | None:
        if epoch != self._epoch or index >= len(self.requests):
            return None
        return self.requests[index]

    async def _answer_generation(
        self,
        request: web.Request,
        record: RecordedRequest,
        fault: Fault | None,
        epoch: int,
        index: int,
    ) -> web.StreamResponse:
        if fault is not None and fault.kind == "reset" and not fault.after_body:
            _hang_up(request, abort=True)
            raise _Aborted
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return await _send_error(request, 413, "request_too_large", "The body is too large.")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if self._record_at(epoch, index) is record:
            self.requests[index] = _with_body(record, body)
        if fault is not None and fault.kind == "reset":
            _hang_up(request, abort=True)
            raise _Aborted
        if not record.authorized:
            return await _send_error(request, 401, "invalid_api_key", "Incorrect API key provided.")
        try:
            generation = _validate(body, frozenset(MODELS) | self.extra_models)
        except _Invalid as exc:
            return await _send_error(request, 400, exc.code, exc.message)
        delay = fault.seconds if fault is not None and fault.kind == "delay" else 0.0
        await asyncio.sleep(self._latency(generation.model) + delay)
        if fault is not None and fault.kind in ("status", "html", "error_body", "refusal"):
            return await _send_fault(request, fault)
        return await self._send_images(request, generation, fault)

    async def _send_images(
        self, request: web.Request, generation: _Generation, fault: Fault | None
    ) -> web.StreamResponse:
        count = generation.n
        if fault is not None and fault.kind == "fewer_images":
            count = min(count, fault.count)
        quirk = fault.quirk_name if fault is not None else None
        as_b64 = generation.response_format == "b64_json" or quirk == "b64_when_url_asked"
        keys = [
            _ImageKey(
                generation.width,
                generation.height,
                self.image_style,
                0 if self.image_style == "noise" else _palette(generation.prompt, i),
            )
            for i in range(count)
        ]
        payloads: list[bytes] = []
        items: list[dict[str, Any]] = []
        origin = str(request.url.origin())
        for key in keys:
            rendered = await _image(key)
            if as_b64 or quirk == "data_uri_in_url":
                payloads.append(await _b64(rendered))
                items.append(_item_b64(quirk))
            else:
                items.append(_item_url(quirk, f"{origin}/files/{self._add_file(key)}"))
        document = json.dumps({"created": int(time.time()), "data": items}).encode()
        frame = document.split(_PLACEHOLDER.encode())
        if quirk == "wrapped_b64":
            payloads = [_wrap(payload) for payload in payloads]
        parts: list[bytes] = [frame[0]]
        for payload, after in zip(payloads, frame[1:], strict=True):
            parts += (payload, after)
        if quirk == "escaped_slashes":
            parts = [part.replace(b"/", b"\\/") for part in parts]
        truncate = fault.fraction if fault is not None and fault.kind == "truncate" else None
        return await _send(request, 200, "application/json", parts, truncate=truncate)

    def _add_file(self, key: _ImageKey) -> str:
        token = secrets.token_urlsafe(16) + _FILE_SUFFIX
        self._files[token] = _File(key, time.monotonic() + self.url_ttl)
        return token

    async def _handle_download(self, request: web.Request) -> web.StreamResponse:
        request[_REQUEST_ID] = request_id = _new_request_id()
        fault = self._download_faults.popleft() if self._download_faults else None
        record = RecordedDownload(
            request_id=request_id,
            path=request.path,
            started=time.monotonic(),
            authorization=request.headers.get("Authorization"),
            headers=_scrubbed_headers(request, set()),
            fault=fault,
        )
        epoch, index = self._epoch, len(self.downloads)
        self.downloads.append(record)
        status: int | None = None
        try:
            response = await self._answer_download(request, fault)
            status = response.status
        except (_Aborted, ConnectionError):  # we hung up, or the client did: nothing to log
            return web.Response(status=499)  # never sent: the transport is gone
        else:
            return response
        finally:
            if epoch == self._epoch and index < len(self.downloads):
                self.downloads[index] = attrs.evolve(
                    self.downloads[index], status=status, finished=time.monotonic()
                )

    async def _answer_download(
        self, request: web.Request, fault: Fault | None
    ) -> web.StreamResponse:
        if fault is not None:
            if fault.kind == "reset":
                _hang_up(request, abort=True)
                raise _Aborted
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            elif fault.kind in ("status", "html"):
                return await _send_fault(request, fault)
        file = self._files.get(request.match_info["name"])
        if file is None:
            return await _send(request, 404, "text/plain", [b"No such file.\n"])
        if time.monotonic() >= file.expires_at:
            return await _send(request, 410, "text/plain", [b"This link has expired.\n"])
        rendered = await _image(file.key)
        truncate = fault.fraction if fault is not None and fault.kind == "truncate" else None
        return await _send(request, 200, "image/png", [rendered.png], truncate=truncate)


def _new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def _bearer(request: web.Request) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def _scrubbed_headers(request: web.Request, secrets_: set[str | None]) -> dict[str, str]:
    """The request headers, lower-cased, without Authorization and with any key redacted."""
    hidden = {s for s in secrets_ if s}
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        lower = name.lower()
        if lower == "authorization":
            continue
        headers[lower] = "<redacted>" if any(s in value for s in hidden) else value
    return headers


def _with_body(record: RecordedRequest, body: Any) -> RecordedRequest:
    if not isinstance(body, dict):
        return record
    images = body.get("image")
    images = [images] if isinstance(images, str) else images
    n = body.get("n")
    return attrs.evolve(
        record,
        model=_str_or_none(body.get("model")),
        prompt=_str_or_none(body.get("prompt")),
        size=_str_or_none(body.get("size")),
        n=n if isinstance(n, int) and not isinstance(n, bool) else None,
        response_format=_str_or_none(body.get("response_format")),
        images=tuple(i for i in images if isinstance(i, str)) if isinstance(images, list) else (),
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _item_url(quirk: Quirk | None, url: str) -> dict[str, Any]:
    if quirk == "both_fields":
        return {"url": url, "b64_json": ""}
    if quirk == "null_sibling":
        return {"url": url, "b64_json": None}
    return {"url": url}


def _item_b64(quirk: Quirk | None) -> dict[str, Any]:
    if quirk == "data_uri_in_url":
        return {"url": f"data:image/png;base64,{_PLACEHOLDER}"}
    if quirk == "data_prefix_b64":
        return {"b64_json": f"data:image/png;base64,{_PLACEHOLDER}"}
    if quirk == "both_fields":
        return {"url": "", "b64_json": _PLACEHOLDER}
    if quirk == "null_sibling":
        return {"url": None, "b64_json": _PLACEHOLDER}
    return {"b64_json": _PLACEHOLDER}


def _wrap(payload: bytes, width: int = 76) -> bytes:
    """Base64 wrapped like MIME, with the newlines written as JSON ``\\n`` escapes."""
    return b"\\n".join(payload[i : i + width] for i in range(0, len(payload), width))


async def _send_error(
    request: web.Request, status: int, code: str, message: str
) -> web.StreamResponse:
    body = _error_json(message, code, "invalid_request_error")
    return await _send(request, status, "application/json", [body])


async def _send_fault(request: web.Request, fault: Fault) -> web.StreamResponse:
    if fault.kind == "html":
        page = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
        page += b"<body><h1>Checking your browser before accessing.</h1></body></html>"
        return await _send(request, 200, "text/html", [page])
    if fault.kind == "error_body":
        body = json.dumps({"error": {"message": fault.message, "code": fault.error_code}})
        return await _send(request, 200, "application/json", [body.encode()])
    if fault.kind == "refusal":
        body = json.dumps({"created": int(time.time()), "data": []})
        return await _send(request, 200, "application/json", [body.encode()])
    headers = list(fault.headers)
    if fault.retry_after is not None:
        headers.insert(0, ("Retry-After", fault.retry_after))
    if fault.as_html:
        page = _html_page(fault.status_code)
        return await _send(request, fault.status_code, "text/html", [page], headers=headers)
    body_bytes = _error_json(fault.message, fault.error_code, _error_type(fault.status_code))
    return await _send(
        request, fault.status_code, "application/json", [body_bytes], headers=headers
    )


async def serve(relay: FakeRelay, *, ready: Callable[[str], None] | None = None) -> None:
    """Start *relay*, call ``ready(relay.url)``, and answer until cancelled; then close it."""
    await relay.start()
    try:
        if ready is not None:
            ready(relay.url)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await relay.aclose()
