"""What the fake relay saw: one record per generation request and per file download."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from aiohttp import web

from ._faults import Fault

__all__ = [
    "BODY_SENT",
    "REQUEST_ID",
    "Flights",
    "RecordedDownload",
    "RecordedRequest",
    "hidden_keys",
    "keys",
    "new_request_id",
    "presented_key",
    "scrubbed_headers",
]

REQUEST_ID: web.RequestKey[str] = web.RequestKey("gemimg_fake_request_id", str)
BODY_SENT: web.RequestKey[Callable[[], None]] = web.RequestKey("gemimg_fake_body_sent")
"""Called by `_wire.send` just before the last piece of a body goes out: the client may go on
from then."""


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


@attrs.define
class Flights:
    """Generation requests in flight at the relay: from their arrival until the last byte of
    their answer is handed to the connection (a client may send its next one then)."""

    now: int = 0
    most: int = 0
    """The most at once since the start or `reset`."""

    def enter(self) -> Callable[[], None]:
        """Count one more in; the callable returned counts it out, once, however often called."""
        self.now += 1
        self.most = max(self.most, self.now)
        left = False

        def leave() -> None:
            nonlocal left
            if not left:
                left = True
                self.now -= 1

        return leave

    def reset(self) -> None:
        self.most = self.now


@attrs.frozen
class RecordedRequest:
    """One generation request as the relay saw it.

    Body fields are None when not sent (or of the wrong type); ``status`` is None while the request
    is being handled and when no status line went out (a reset, or the client hung up first).
    """

    request_id: str
    started: float
    dialect: str = "images"
    """The route it came on: "images", "chat" or "gemini"."""
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
    body: Any = attrs.field(default=None, repr=False, eq=False)
    """The parsed JSON body, for asserting on fields beyond those above."""

    @property
    def image_count(self) -> int:
        """How many input images the request carried."""
        return len(self.images)

    def with_body(self, body: Any, seen: Mapping[str, Any]) -> RecordedRequest:
        """This record with the body's fields (`seen`, read by the dialect) filled in."""
        n = seen.get("n")
        images = seen.get("images")
        return attrs.evolve(
            self,
            model=_str_or_none(seen.get("model")),
            prompt=_str_or_none(seen.get("prompt")),
            size=_str_or_none(seen.get("size")),
            n=n if isinstance(n, int) and not isinstance(n, bool) else None,
            response_format=_str_or_none(seen.get("response_format")),
            images=tuple(i for i in images if isinstance(i, str))
            if isinstance(images, list)
            else (),
            body=body,
        )


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


def keys(value: Iterable[str]) -> frozenset[str]:
    """One key or several, as a set."""
    return frozenset({value}) if isinstance(value, str) else frozenset(value)


def hidden_keys(value: frozenset[str]) -> str:
    """What a repr shows of the keys: how many."""
    return f"<{len(value)} keys>"


def presented_key(request: web.Request, *, google: bool) -> str | None:
    """The key a request carries: a Bearer header, and for Google's API also `x-goog-api-key`
    or `?key=` (relays that pass it through take all three)."""
    if google:
        found = request.headers.get("x-goog-api-key") or request.query.get("key")
        if found:
            return found.strip()
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def scrubbed_headers(request: web.Request, secrets_: set[str | None]) -> dict[str, str]:
    """The request headers, lower-cased, without Authorization and with any key redacted."""
    hidden = {s for s in secrets_ if s}
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in ("authorization", "x-goog-api-key"):
            continue
        headers[lower] = "<redacted>" if any(s in value for s in hidden) else value
    return headers


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
