"""The fake relay's side of the wire: requests checked as a relay checks them, answers written
(and cut short) as relays write them."""

from __future__ import annotations

import binascii
import http
import json
import math
import re
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import attrs
from aiohttp import web

from ._faults import Fault, Quirk, phrase
from ._images import RATIOS, pixel_size

__all__ = [
    "PLACEHOLDER",
    "Aborted",
    "Generation",
    "Invalid",
    "framed",
    "hang_up",
    "item_b64",
    "item_url",
    "send",
    "send_error",
    "send_fault",
    "validate",
    "wrap",
]

PLACEHOLDER = "@@GEMIMG-FAKE-IMAGE@@"
_MAX_N = 4
_MAX_INPUT_IMAGES = 14
_MAX_INLINE_IMAGE_BYTES = 7 * 1024 * 1024
_SLICE = 1024 * 1024
_DATA_URI = re.compile(r"data:image/(?:png|jpeg|webp|gif);base64,(.*)", re.DOTALL)


class Aborted(Exception):  # noqa: N818 - a signal, not an error
    """The handler dropped the connection on purpose."""


class Invalid(Exception):  # noqa: N818 - a 400 answer, raised to keep validation linear
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen
class Generation:
    model: str
    prompt: str
    width: int
    height: int
    n: int
    response_format: Literal["url", "b64_json"]


def validate(body: Any, models: frozenset[str]) -> Generation:  # noqa: C901, PLR0912
    if not isinstance(body, dict):
        raise Invalid("invalid_json", "The request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        raise Invalid("missing_model", "You must provide a model parameter.")
    if not isinstance(model, str) or model not in models:
        raise Invalid("invalid_model", f"The model {model!r} does not exist.")
    prompt = body.get("prompt")
    if prompt is None:
        raise Invalid("missing_prompt", "You must provide a prompt parameter.")
    if not isinstance(prompt, str) or not prompt.strip():
        raise Invalid("invalid_prompt", "prompt must be a non-empty string.")
    size = body.get("size")
    try:
        width, height = pixel_size(model, "1:1" if size is None else size)
    except (ValueError, AttributeError):
        raise Invalid("invalid_size", f"size must be one of {', '.join(RATIOS)}.") from None
    response_format = body.get("response_format")
    if response_format is None:
        response_format = "url"
    if response_format not in ("url", "b64_json"):
        raise Invalid("invalid_response_format", "response_format must be 'url' or 'b64_json'.")
    answer: Literal["url", "b64_json"] = "url" if response_format == "url" else "b64_json"
    n = body.get("n")
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= _MAX_N:
        raise Invalid("invalid_n", f"n must be an integer from 1 to {_MAX_N}.")
    images = body.get("image")
    if images is not None:
        images = [images] if isinstance(images, str) else images
        if not isinstance(images, list):
            raise Invalid("invalid_image", "image must be a string or an array of strings.")
        if len(images) > _MAX_INPUT_IMAGES:
            raise Invalid("too_many_images", f"At most {_MAX_INPUT_IMAGES} input images.")
        for image in images:
            _validate_image(image)
    return Generation(model, prompt, width, height, n, answer)


def _validate_image(image: Any) -> None:
    if not isinstance(image, str):
        raise Invalid("invalid_image", "Each image must be a string.")
    if image.startswith("data:"):
        match = _DATA_URI.fullmatch(image)
        if match is None:
            raise Invalid(
                "invalid_image", "A data URI must be data:image/<png|jpeg|webp|gif>;base64,..."
            )
        try:
            decoded = binascii.a2b_base64(match.group(1), strict_mode=True)
        except binascii.Error:
            raise Invalid("invalid_image", "The data URI holds invalid base64.") from None
        if not decoded:
            raise Invalid("invalid_image", "The data URI holds no data.")
        if len(decoded) > _MAX_INLINE_IMAGE_BYTES:
            raise Invalid("image_too_large", "An inline image may be at most 7 MB.")
        return
    parts = urllib.parse.urlsplit(image)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Invalid("invalid_image", "Each image must be an http(s) URL or a data URI.")


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
    title = f"{status} {phrase(status)}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


async def send(
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
        hang_up(request, abort=False)
    return response


def hang_up(request: web.Request, *, abort: bool) -> None:
    transport = request.transport
    if transport is not None:
        if abort:
            transport.abort()
        else:
            transport.close()  # flushes what was written, then closes


def item_url(quirk: Quirk | None, url: str) -> dict[str, Any]:
    if quirk == "both_fields":
        return {"url": url, "b64_json": ""}
    if quirk == "null_sibling":
        return {"url": url, "b64_json": None}
    return {"url": url}


def item_b64(quirk: Quirk | None) -> dict[str, Any]:
    if quirk == "data_uri_in_url":
        return {"url": f"data:image/png;base64,{PLACEHOLDER}"}
    if quirk == "data_prefix_b64":
        return {"b64_json": f"data:image/png;base64,{PLACEHOLDER}"}
    if quirk == "both_fields":
        return {"url": "", "b64_json": PLACEHOLDER}
    if quirk == "null_sibling":
        return {"url": None, "b64_json": PLACEHOLDER}
    return {"b64_json": PLACEHOLDER}


def framed(document: Any, payloads: Sequence[bytes], quirk: Quirk | None) -> list[bytes]:
    """`document` as JSON with each `PLACEHOLDER` replaced by the next payload, as parts to
    send (the payloads are not copied), shaped by `quirk`."""
    frame = json.dumps(document).encode().split(PLACEHOLDER.encode())
    if quirk == "wrapped_b64":
        payloads = [wrap(payload) for payload in payloads]
    parts: list[bytes] = [frame[0]]
    for payload, after in zip(payloads, frame[1:], strict=True):
        parts += (payload, after)
    if quirk == "escaped_slashes":
        parts = [part.replace(b"/", b"\\/") for part in parts]
    return parts


def wrap(payload: bytes, width: int = 76) -> bytes:
    """Base64 wrapped like MIME, with the newlines written as JSON ``\\n`` escapes."""
    return b"\\n".join(payload[i : i + width] for i in range(0, len(payload), width))


async def send_error(
    request: web.Request, status: int, code: str, message: str
) -> web.StreamResponse:
    body = _error_json(message, code, "invalid_request_error")
    return await send(request, status, "application/json", [body])


async def send_fault(request: web.Request, fault: Fault) -> web.StreamResponse:
    if fault.kind == "html":
        page = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
        page += b"<body><h1>Checking your browser before accessing.</h1></body></html>"
        return await send(request, 200, "text/html", [page])
    if fault.kind == "error_body":
        body = json.dumps({"error": {"message": fault.message, "code": fault.error_code}})
        return await send(request, 200, "application/json", [body.encode()])
    if fault.kind == "refusal":
        body = json.dumps({"created": int(time.time()), "data": []})
        return await send(request, 200, "application/json", [body.encode()])
    headers = list(fault.headers)
    if fault.retry_after is not None:
        headers.insert(0, ("Retry-After", fault.retry_after))
    if fault.as_html:
        page = _html_page(fault.status_code)
        return await send(request, fault.status_code, "text/html", [page], headers=headers)
    body_bytes = _error_json(fault.message, fault.error_code, _error_type(fault.status_code))
    return await send(request, fault.status_code, "application/json", [body_bytes], headers=headers)
