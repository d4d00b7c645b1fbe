"""What a web backend should answer its own caller when a call fails: `error_response(error)`.

    error                                  status  code                 Retry-After
    ValidationError (bad prompt, size...)  422     invalid_request
    ContentPolicyError                     422     content_policy
    RefusalError (200 without an image)    422     no_image
    BadRequestError (the relay's 4xx)      400     rejected
    RateLimitError                         429     rate_limited         the relay's, or default
    PoolTimeoutError (the pool was full)   503     busy                 default
    LimiterUnavailableError (Redis down)   503     busy                 default
    ClientClosedError (shutting down)      503     shutting_down
    ConnectError (relay unreachable)       503     relay_unreachable    default
    ServerError 503 / 5xx, 408             503/502 relay_unavailable / relay_error
    ModelNotServedError                    502     model_unavailable
    AuthenticationError (our key refused)  502     relay_auth
    MalformedResponseError                 502     relay_error
    OutcomeUnknownError                    502     outcome_unknown      (never: it may be billed)
    DownloadError, ImageExpiredError       502     download_failed
    InvalidDestinationError, SaveError     500     storage
    ConfigurationError, EventLoopError     500     misconfigured
    anything else                          500     internal

The detail is a fixed sentence per code, never the relay's text, the relay's address or the
key; a ValidationError's own message (about the caller's input) is the one exception. Log the
error itself for the whole story: `request_id` ties it to the relay's logs.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from ._exceptions import GemimgError, ServerError, ValidationError

__all__ = ["DEFAULT_RETRY_AFTER", "ErrorResponse", "error_response"]

DEFAULT_RETRY_AFTER = 5.0
"""Seconds a caller is told to wait when the error itself names no wait."""


@attrs.frozen
class _Row:
    status: int
    code: str
    detail: str
    retry: bool = False


# Looked up by class name along the error's MRO, so the most specific row wins.
_TABLE: dict[str, _Row] = {
    "InvalidDestinationError": _Row(500, "storage", "the server cannot store images"),
    "ValidationError": _Row(422, "invalid_request", "the request is invalid"),
    "ContentPolicyError": _Row(
        422, "content_policy", "the prompt or an input image was blocked by a safety filter"
    ),
    "RefusalError": _Row(422, "no_image", "the model made no image for this prompt"),
    "ModelNotServedError": _Row(502, "model_unavailable", "the image model is not available"),
    "BadRequestError": _Row(400, "rejected", "the image service rejected the request"),
    "RateLimitError": _Row(429, "rate_limited", "too many requests: try again later", True),
    "PoolTimeoutError": _Row(503, "busy", "the server is busy: try again shortly", True),
    "LimiterUnavailableError": _Row(503, "busy", "the server is busy: try again shortly", True),
    "ClientClosedError": _Row(503, "shutting_down", "the server is shutting down"),
    "ConnectError": _Row(503, "relay_unreachable", "the image service is unreachable", True),
    "AuthenticationError": _Row(502, "relay_auth", "the image service refused our credentials"),
    "ServerError": _Row(502, "relay_error", "the image service failed"),
    "MalformedResponseError": _Row(502, "relay_error", "the image service failed"),
    "OutcomeUnknownError": _Row(
        502, "outcome_unknown", "the image service did not answer: the image may have been made"
    ),
    "TransportError": _Row(502, "relay_error", "the image service failed"),
    "DownloadError": _Row(502, "download_failed", "the image could not be fetched"),
    "SaveError": _Row(500, "storage", "the server could not store the image"),
    "ConfigurationError": _Row(500, "misconfigured", "the server is misconfigured"),
    "GemimgError": _Row(500, "internal", "internal error"),
}
_UNAVAILABLE = _Row(503, "relay_unavailable", "the image service is unavailable", True)
_INTERNAL = _TABLE["GemimgError"]


@attrs.frozen
class ErrorResponse:
    """The HTTP answer for an error: `status`, `headers` (Retry-After when a wait helps) and a
    JSON body from `to_json()`."""

    status: int
    code: str
    """A short machine-readable name of what went wrong: see the table in `_http`."""
    detail: str
    """A sentence for the caller, with nothing of the relay's in it."""
    retry_after: int | None = None
    """Whole seconds to wait before trying again; None when trying again will not help."""
    request_id: str | None = None
    """The relay's id of the request, for the logs of both sides."""

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

    def to_json(self) -> dict[str, Any]:
        """``{"error": {"code": ..., "message": ..., "request_id": ...}}``."""
        body: dict[str, Any] = {"code": self.code, "message": self.detail}
        if self.request_id:
            body["request_id"] = self.request_id
        return {"error": body}


def _row(error: BaseException) -> _Row:
    if isinstance(error, ServerError) and error.status == 503:  # noqa: PLR2004
        return _UNAVAILABLE
    for cls in type(error).__mro__:
        if issubclass(cls, GemimgError) and cls.__name__ in _TABLE:
            return _TABLE[cls.__name__]
    return _INTERNAL


def error_response(
    error: BaseException, *, retry_after: float = DEFAULT_RETRY_AFTER
) -> ErrorResponse:
    """What to answer for `error` (anything that is not ours is a 500 "internal").

    `retry_after` is the wait to advise, in seconds, when waiting helps and the error names no
    wait of its own (a 429's Retry-After is passed on, rounded up).
    """
    row = _row(error)
    wait: int | None = None
    if row.retry:
        seconds = getattr(error, "retry_after", None)
        seconds = retry_after if seconds is None else seconds
        wait = max(1, math.ceil(seconds))
    detail = row.detail
    if isinstance(error, ValidationError) and row.status == 422:  # noqa: PLR2004
        detail = error.message
    request_id = error.request_id if isinstance(error, GemimgError) else None
    return ErrorResponse(row.status, row.code, detail, wait, request_id)
