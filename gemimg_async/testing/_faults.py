"""Scripted misbehaviour: what the fake relay's next requests do wrong, as relays do."""

from __future__ import annotations

import http
from collections.abc import Mapping
from typing import Literal, Self, get_args

import attrs

__all__ = ["GEMINI_QUIRKS", "QUIRKS", "Fault", "Quirk", "check_latency", "phrase"]

Quirk = Literal[
    "both_fields",
    "null_sibling",
    "data_uri_in_url",
    "data_prefix_b64",
    "b64_when_url_asked",
    "escaped_slashes",
    "wrapped_b64",
    "thought_first",
    "snake_case",
]
#: The images-dialect answer shapes `Fault.quirk` knows.
QUIRKS: tuple[Quirk, ...] = get_args(Quirk)[:7]
#: The gemini ones: ``"thought": true`` before a draft's data, and snake_case keys.
GEMINI_QUIRKS: tuple[Quirk, ...] = get_args(Quirk)[7:]

FaultKind = Literal[
    "status",
    "reset",
    "truncate",
    "delay",
    "html",
    "error_body",
    "refusal",
    "fewer_images",
    "quirk",
    "drafts",
    "blocked",
]
DOWNLOAD_KINDS: frozenset[FaultKind] = frozenset({"status", "reset", "truncate", "delay", "html"})


@attrs.frozen
class Fault:
    """One scripted misbehaviour, consumed by exactly one request. Build it with a constructor."""

    kind: FaultKind
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
    reason: str | None = None

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
            message=message if message is not None else phrase(code),
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
    def drafts(cls, count: int = 2) -> Self:
        """Answer *count* draft images before each final one, as the model makes them: parts
        marked ``"thought": true`` (gemini), or plain extra images first (chat, images)."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        return cls(kind="drafts", count=count)

    @classmethod
    def blocked(cls, reason: str = "PROHIBITED_CONTENT") -> Self:
        """Block the prompt: gemini answers 200 with ``promptFeedback.blockReason``; the
        OpenAI-shaped dialects answer 400 ``prompt_blocked``, as new-api does."""
        return cls(kind="blocked", reason=reason)

    @classmethod
    def refusal(cls, reason: str = "IMAGE_SAFETY") -> Self:
        """Answer HTTP 200 with no images: ``"data": []`` (images), ``finish_reason:
        "content_filter"`` (chat), or ``finishReason`` *reason* (gemini)."""
        return cls(kind="refusal", reason=reason)

    @classmethod
    def fewer_images(cls, count: int) -> Self:
        """Answer at most *count* images, whatever ``n`` asked."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        return cls(kind="fewer_images", count=count)

    @classmethod
    def quirk(cls, name: Quirk) -> Self:
        """Answer normally, shaped like a known relay variant (one of `QUIRKS`)."""
        if name not in (*QUIRKS, *GEMINI_QUIRKS):
            raise ValueError(
                f"quirk must be one of {', '.join((*QUIRKS, *GEMINI_QUIRKS))}, got {name!r}"
            )
        return cls(kind="quirk", quirk_name=name)


def check_latency(_: object, __: object, value: float | Mapping[str, float]) -> None:
    """The relay's `latency` (seconds, or seconds per model): never below 0."""
    values = value.values() if isinstance(value, Mapping) else [value]
    if any(not v >= 0 for v in values):
        raise ValueError(f"latency must be >= 0, got {value!r}")


def phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Error"
