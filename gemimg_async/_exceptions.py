"""The errors gemimg_async raises.

Every error is a `GemimgError`; catch that to catch them all::

    GemimgError
    ├── ClientClosedError           the client was closed (by `aclose`) while it was in use
    ├── ConfigurationError          no key, a bad base URL, http:// to a remote host
    ├── LimiterUnavailableError     Redis, which shares the limits, is unreachable (and "fail")
    ├── PoolTimeoutError            no place in the pool within `pool_timeout`: nothing was sent
    ├── ValidationError (ValueError)  bad input, caught before anything is sent or paid
    │   ├── InvalidModelError
    │   ├── InvalidPromptError
    │   ├── InvalidCountError
    │   ├── InvalidSizeError
    │   ├── InvalidResponseFormatError
    │   ├── InvalidImageError
    │   │   └── TooManyImagesError
    │   └── InvalidDestinationError save_to names no folder that can take files
    ├── APIError                    the relay answered, and not with an image
    │   ├── AuthenticationError     401, 403
    │   ├── BadRequestError         400, 404, 413, 422 and other 4xx
    │   │   ├── ContentPolicyError  the prompt or an input image was blocked
    │   │   └── ModelNotServedError no channel of the relay serves the model (its 503 or 500)
    │   ├── RateLimitError          429
    │   ├── ServerError             5xx, 408
    │   ├── RefusalError            200 without an image (a safety refusal, an error body)
    │   └── MalformedResponseError  200 with a body that is not the documented JSON
    ├── SaveError                   the images were paid for but could not all be written; its
    │                               `result` holds them (defined beside GenerationResult)
    ├── EventLoopError              a client used on another event loop than its own
    ├── TransportError              no usable answer arrived
    │   ├── ConnectError            the request was never sent: safe to retry, not billed
    │   └── OutcomeUnknownError     sent, answer lost (timeout, reset, truncated): may be billed
    └── DownloadError               fetching a returned image URL failed
        └── ImageExpiredError       the URL is past its ~24 h life (403/404/410)

Errors from a request carry `request_id` (the relay's, when it sent one), `request_ids` (one per
attempt that got one), `idempotency_key`, `attempts`, `reported_cost` and `endpoint`. The API key
never appears in any of them.
"""

from __future__ import annotations

from decimal import Decimal

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ConfigurationError",
    "ConnectError",
    "ContentPolicyError",
    "DownloadError",
    "EventLoopError",
    "GemimgError",
    "ImageExpiredError",
    "InvalidCountError",
    "InvalidDestinationError",
    "InvalidImageError",
    "InvalidModelError",
    "InvalidPromptError",
    "InvalidResponseFormatError",
    "InvalidSizeError",
    "LimiterUnavailableError",
    "MalformedResponseError",
    "ModelNotServedError",
    "OutcomeUnknownError",
    "PoolTimeoutError",
    "RateLimitError",
    "RefusalError",
    "ServerError",
    "TooManyImagesError",
    "TransportError",
    "ValidationError",
]


class GemimgError(Exception):
    """Root of every error this library raises."""

    request_id: str | None = None
    request_ids: tuple[str, ...] = ()
    """The relay's id of every attempt that got one, oldest first."""
    idempotency_key: str | None = None
    attempts: int = 0
    reported_cost: Decimal | None = None
    """What the relay said the answered call cost (LiteLLM's `x-litellm-response-cost`, or its
    `usage` priced): a refusal may be billed. None when it said nothing."""
    hint: str | None = None
    """What to try, when the library can tell (another dialect, say)."""
    endpoint: str | None = None
    """The endpoint the last attempt went to, with `Client(endpoints=...)`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        details = [f"request id {self.request_id}"] if self.request_id else []
        if self.attempts > 1:
            details.append(f"after {self.attempts} attempts")
        text = f"{self.message} ({', '.join(details)})" if details else self.message
        return f"{text}; {self.hint}" if self.hint else text

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled whole (keyword-only arguments would break the default): errors can cross
        # process boundaries, as outcomes of jobs spread over workers will.
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[GemimgError], message: str, state: dict[str, object]) -> GemimgError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class ClientClosedError(GemimgError):
    """The client was closed while a call was using it, or before it was called."""


class ConfigurationError(GemimgError):
    """The client cannot be configured as asked: no key, a bad base URL, an unsafe scheme."""


class LimiterUnavailableError(GemimgError):
    """The limiter shared through Redis cannot reach it, and was told to fail rather than fall
    back to a local share of the limits. Nothing was sent for the request that got it."""


class PoolTimeoutError(GemimgError):
    """No place in the pool came within `pool_timeout` seconds: nothing was sent, nothing is
    billed. A web backend answers it 503 with Retry-After (`error_response`)."""


class ValidationError(GemimgError, ValueError):
    """A request that would be rejected or wasted: raised before anything is sent."""


class InvalidModelError(ValidationError):
    """The model is neither a `Model`, an alias nor a model name."""


class InvalidPromptError(ValidationError):
    """The prompt is empty or not a string."""


class InvalidCountError(ValidationError):
    """`n` is not a whole number of at least 1."""


class InvalidSizeError(ValidationError):
    """`size` is not an aspect ratio `W:H` the model supports."""


class InvalidResponseFormatError(ValidationError):
    """`response_format` is neither "url" nor "b64_json"."""


class InvalidImageError(ValidationError):
    """An input image cannot be read, is not PNG/JPEG/WEBP/GIF, or is too large."""


class TooManyImagesError(InvalidImageError):
    """More input images than the model accepts."""


class InvalidDestinationError(ValidationError):
    """`save_to` is a file, lies under one, or names a folder that cannot take files."""


class EventLoopError(ConfigurationError):
    """A client was used on another event loop than the one it first ran on (a second
    `asyncio.run()`, say): its connections belong to that loop. Make one client per loop."""


class APIError(GemimgError):
    """The relay answered with an error instead of an image."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        head = f"HTTP {self.status}: {self.message}"
        details = [f"code {self.code}"] if self.code not in (None, "") else []
        if self.retry_after is not None:
            details.append(f"retry after {self.retry_after:g} s")
        if self.request_id:
            details.append(f"request id {self.request_id}")
        if self.attempts > 1:
            details.append(f"after {self.attempts} attempts")
        text = f"{head} ({', '.join(details)})" if details else head
        return f"{text}; {self.hint}" if self.hint else text


class AuthenticationError(APIError):
    """The relay rejected the key (401) or its permissions (403)."""


class BadRequestError(APIError):
    """The relay rejected the request as it stands; sending it again will not help."""


class ContentPolicyError(BadRequestError):
    """The prompt or an input image was blocked by a safety filter."""


class ModelNotServedError(BadRequestError):
    """The relay has no channel for the model (new-api's `model_not_found`, one-api's
    "无可用渠道"): a 503 or 500 that sending again will not change."""


class RateLimitError(APIError):
    """Too many requests (429). `retry_after` holds the server's wait, when it gave one."""


class ServerError(APIError):
    """The relay or the model behind it failed (5xx) or timed the request out (408)."""


class RefusalError(APIError):
    """HTTP 200 without an image: a safety refusal (`"data": []`) or an error in the body."""


class MalformedResponseError(APIError):
    """HTTP 200 whose body is not the documented JSON (an HTML page, garbage, no images)."""


class TransportError(GemimgError):
    """No usable answer arrived from the relay."""


class ConnectError(TransportError):
    """The request never left this machine in full (DNS, refused, connect timeout, early reset).

    Nothing was generated, so nothing was billed: it is safe to send again.
    """


class OutcomeUnknownError(TransportError):
    """The request was sent but its answer was lost: a read timeout, a reset, a truncated body.

    The relay may have generated, and billed, the image. Sending again may bill twice.
    """


class DownloadError(GemimgError):
    """Fetching a returned image URL failed; the generation itself succeeded (and was paid)."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class ImageExpiredError(DownloadError):
    """The image URL no longer serves the image: relays keep them for about 24 hours."""
