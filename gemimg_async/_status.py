"""A relay's non-2xx answer as our error: its status, its message and code, its Retry-After.

Relays write error bodies in many shapes (`{"error": {...}}`, a top-level `message`, `msg` or
`error_msg`, HTML pages, plain text, Chinese messages); `error_fields` reads them all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ._exceptions import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ContentPolicyError,
    ModelNotServedError,
    RateLimitError,
    ServerError,
)
from ._retry import parse_retry_after

__all__ = ["ERROR_BODY_LIMIT", "api_error", "document_error", "error_fields", "printable"]

ERROR_BODY_LIMIT = 64 * 1024
"""Bytes of an error answer read to find its message: error pages are short, or cut short."""
_BLOCKED = re.compile(
    r"safety|blocked|content[ _-]?polic|moderation|prohibited|sensitive|违规|敏感|审核|不安全",
    re.IGNORECASE,
)
_TAGS = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.IGNORECASE | re.DOTALL)
_BAD_KEY = re.compile(r"API_KEY_INVALID|API key not valid|API key not found", re.IGNORECASE)
_NOT_SERVED = re.compile(
    r"model_not_found|无可用渠道|無可用管道|no available channel|not found in any channel"
    r"|可用渠道不存在|model .{0,80} (?:does not exist|is not (?:available|supported))",
    re.IGNORECASE,
)
# ESC sequences (CSI, OSC up to BEL or ST, two-byte escapes), then any control character left
# but newline and tab: what a terminal would act on rather than show.
_CONTROLS = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?"
    r"|\x9b[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)


def printable(text: str) -> str:
    """`text` from a relay, without what a terminal would act on (escape sequences, control
    characters): relays' words are printed and logged, never obeyed."""
    if text.isprintable():  # no control character at all (a request id, most messages)
        return text
    return _CONTROLS.sub("", text)


_DELAY = re.compile(r"\s*(\d+(?:\.\d+)?)s\s*")


def error_fields(body: bytes) -> tuple[str, str | int | None]:
    """(message, code) from an error body of any shape relays use: JSON, HTML or text."""
    message, code, _ = _read(body)
    return message, code


def _read(body: bytes) -> tuple[str, str | int | None, Any]:
    """(message, code, the parsed JSON or None) of an error body."""
    text = body.decode("utf-8-sig", "replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, list) and len(doc) == 1:  # Google's streaming endpoints wrap it
        doc = doc[0]
    if isinstance(doc, dict):
        message, code = document_error(doc)
        return message or printable(text[:200]), code, doc
    if text.startswith("<"):
        text = " ".join(_TAGS.sub(" ", text).split())
    return printable(text[:200]) or "(empty body)", None, None


def _google_details(doc: Any) -> tuple[float | None, list[str]]:
    """The wait of a RetryInfo detail ("7s"), and the reasons of ErrorInfo details, of an
    error body as Google's API writes it."""
    error = doc.get("error") if isinstance(doc, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    delay, reasons = None, []
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        found = detail.get("retryDelay")
        if isinstance(found, str) and (match := _DELAY.fullmatch(found)):
            delay = float(match[1])
        if isinstance(detail.get("reason"), str):
            reasons.append(detail["reason"])
    return delay, reasons


def document_error(doc: dict[str, Any]) -> tuple[str | None, str | int | None]:
    """(message, code) of the error a JSON answer reports, if it reports one."""
    error = doc.get("error")
    source: dict[str, Any] = error if isinstance(error, dict) else doc
    message = next(
        (
            str(source[key])
            for key in ("message", "msg", "error_msg", "detail")
            if isinstance(source.get(key), (str, int)) and str(source[key])
        ),
        error if isinstance(error, str) and error else None,
    )
    code = source.get("code")
    if code is None:
        code = source.get("type")
    if not isinstance(code, (str, int)) or isinstance(code, bool):
        code = None
    if isinstance(code, str):
        code = printable(code)[:200]
    return None if message is None else printable(message)[:2000], code


def api_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    request_id: str | None,
    now: float,
    model: str | None = None,
) -> APIError:
    """The error a relay's non-2xx answer amounts to; `now` is the wall clock, for HTTP dates.

    A 5xx saying that no channel serves `model` is a ModelNotServedError: permanent, and no
    sign of load (the pool is not shrunk for it).
    """
    message, code, doc = _read(body)
    delay, reasons = _google_details(doc)
    retry_after = parse_retry_after(headers, now)
    if retry_after is None:
        retry_after = delay
    cls: type[APIError]
    if status in (401, 403) or _BAD_KEY.search(" ".join([message, str(code), *reasons])):
        cls = AuthenticationError
    elif status == 429:  # noqa: PLR2004
        cls = RateLimitError
    elif status >= 500 and _NOT_SERVED.search(f"{message} {code}"):  # noqa: PLR2004
        cls = ModelNotServedError
        if model and model not in message:
            message = f"the relay serves no {model}: {message}"
    elif status == 408 or status >= 500:  # noqa: PLR2004
        cls = ServerError
    elif _BLOCKED.search(f"{message} {code}"):
        cls = ContentPolicyError
    else:
        cls = BadRequestError
    if 300 <= status < 400:  # noqa: PLR2004
        where = printable(headers.get("Location", "?"))[:300]
        message = f"the relay redirected to {where}; use that address as base_url"
    return cls(message, status=status, code=code, request_id=request_id, retry_after=retry_after)
