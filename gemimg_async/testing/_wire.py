"""The fake relay's side of the wire: requests checked as a relay checks them, answers written
(and cut short) as relays write them."""

from __future__ import annotations

import asyncio
import http
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from aiohttp import web

from ._faults import Fault, Quirk, phrase
from ._records import BODY_SENT

__all__ = [
    "PLACEHOLDER",
    "Aborted",
    "Invalid",
    "cost_header",
    "framed",
    "hang_up",
    "item_b64",
    "item_url",
    "send",
    "send_error",
    "send_fault",
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


class Invalid(Exception):  # noqa: N818 - a 4xx answer, raised to keep validation linear
    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _error_json(message: str, code: str | int | None, type_: str) -> bytes:
    error = {"message": message, "type": type_, "code": code}
    return json.dumps({"error": error}, ensure_ascii=False).encode()


_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _google_error(
    status: int, message: str, *, reason: str | None = None, retry_delay: str | None = None
) -> bytes:
    """An error body as Google's API writes it, with its ErrorInfo and RetryInfo details."""
    details: list[dict[str, Any]] = []
    if reason is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
            }
        )
    if retry_delay is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_delay}s"}
        )
    error = {
        "code": status,
        "message": message,
        "status": _GOOGLE_STATUS.get(status, "UNKNOWN"),
        "details": details,
    }
    return json.dumps({"error": error}).encode()


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
    pause: float = 0.0,
) -> web.StreamResponse:
    """Stream *parts* in slices of at most 1 MiB (*pause* seconds apart), or only *truncate*
    of them, then hang up."""
    total = sum(len(part) for part in parts)
    response = web.StreamResponse(status=status)
    for name, value in headers:
        response.headers[name] = value
    response.content_type = content_type
    response.content_length = total
    await response.prepare(request)
    limit = total if truncate is None else math.floor(total * truncate)
    sent, body_sent = 0, request.get(BODY_SENT)
    for part in parts:
        view = memoryview(part)
        for start in range(0, len(view), _SLICE):
            piece = view[start : start + min(_SLICE, limit - sent)]
            if not piece:
                break
            if sent and pause:
                await asyncio.sleep(pause)
            if sent + len(piece) >= limit and body_sent is not None:
                body_sent()
            await response.write(piece)
            sent += len(piece)
    if truncate is None:
        await response.write_eof()
    else:
        await response.write(b"")  # sends the headers if no body went out
        hang_up(request, abort=False)
    return response


def cost_header(per_image: float | None, images: int) -> list[tuple[str, str]]:
    """LiteLLM's `x-litellm-response-cost` for `images` made at `per_image` dollars (none
    without a price)."""
    if per_image is None:
        return []
    return [("x-litellm-response-cost", repr(per_image * images))]


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
    request: web.Request, status: int, code: str, message: str, *, google: bool = False
) -> web.StreamResponse:
    body = (
        _google_error(status, message, reason=code)
        if google
        else _error_json(message, code, "invalid_request_error")
    )
    return await send(request, status, "application/json", [body])


async def send_fault(
    request: web.Request, fault: Fault, *, google: bool = False
) -> web.StreamResponse:
    """Answer as `fault` says; `google` writes error bodies as Google's API does, with the wait
    of a 429 in its RetryInfo detail rather than a Retry-After header."""
    if fault.kind == "html":
        page = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
        page += b"<body><h1>Checking your browser before accessing.</h1></body></html>"
        return await send(request, 200, "text/html", [page])
    if fault.kind == "error_body":
        body = json.dumps({"error": {"message": fault.message, "code": fault.error_code}})
        return await send(request, 200, "application/json", [body.encode()])
    headers = list(fault.headers)
    if google and not fault.as_html:
        delay = fault.retry_after
        body_bytes = _google_error(fault.status_code, fault.message, retry_delay=delay)
        return await send(
            request, fault.status_code, "application/json", [body_bytes], headers=headers
        )
    if fault.retry_after is not None:
        headers.insert(0, ("Retry-After", fault.retry_after))
    if fault.as_html:
        page = _html_page(fault.status_code)
        return await send(request, fault.status_code, "text/html", [page], headers=headers)
    body_bytes = _error_json(fault.message, fault.error_code, _error_type(fault.status_code))
    return await send(request, fault.status_code, "application/json", [body_bytes], headers=headers)
