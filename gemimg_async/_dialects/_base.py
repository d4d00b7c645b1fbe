"""What every dialect is made of: the request it writes and what it reads in an answer."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs
import yarl

from .._exceptions import ConfigurationError
from .._jsonstream import ImageStreamParser
from .._models import ImageRequest

__all__ = ["Dialect", "Found", "Outgoing", "Reading", "base_url"]

_DIALECT_PATHS = ("/images/generations", "/chat/completions")
"""Endpoint paths a user may paste as the base URL; the dialect adds its own."""


def base_url(url: str, *, allow_insecure_http: bool = False) -> yarl.URL:
    """The relay's root under `url`, which users write with or without `/v1` (or as a full
    endpoint). http:// is refused for anything but loopback unless `allow_insecure_http`."""
    try:
        parsed = yarl.URL(url.strip())
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"base_url {url!r} is not a URL") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(
            f"base_url must be an http(s) URL such as 'https://api.example.com', not {url!r}"
        )
    if parsed.scheme == "http" and not allow_insecure_http and not _is_loopback(parsed.host):
        raise ConfigurationError(
            f"base_url {url!r} would send the API key unencrypted: use https, "
            "or pass allow_insecure_http=True for a relay you trust on your own network"
        )
    path = parsed.path.rstrip("/")
    for endpoint in _DIALECT_PATHS:
        path = path.removesuffix(endpoint)
    path = path.removesuffix("/v1")
    return parsed.with_path(path or "/").with_query(None).with_fragment(None)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def join(base: yarl.URL, path: str) -> yarl.URL:
    """`base` with `path` (no leading slash) appended to its own path."""
    return base.with_path(f"{base.path.rstrip('/')}/{path}")


@attrs.frozen
class Outgoing:
    """One HTTP request as a dialect writes it; the key is added by the relay session."""

    url: yarl.URL
    body: bytes
    headers: Mapping[str, str] = attrs.Factory(dict)


@attrs.frozen
class Found:
    """One image of an answer: a streamed string (by its path in the document), an http(s)
    URL, or base64 the streaming parser did not divert (decoded after the body)."""

    index: int
    path: tuple[str | int, ...] | None = None
    url: str | None = None
    inline: str | None = None


@attrs.frozen
class Reading:
    """What an answer with images says: the images, in order, and when they were made."""

    images: tuple[Found, ...]
    created: int | None = None


class Dialect(Protocol):
    """How one shape of relay API is spoken."""

    @property
    def name(self) -> str: ...

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """The headers that carry the key: kept in the relay session, never in a call."""
        ...

    def outgoing(self, base: yarl.URL, request: ImageRequest, images: Sequence[str]) -> Outgoing:
        """The HTTP request for `request`, with `images` as the encoded inputs."""
        ...

    def parser(self) -> ImageStreamParser:
        """A streaming parser for one answer, diverting this dialect's image strings."""
        ...

    def read(self, doc: Any, *, request_id: str | None) -> Reading:
        """The images `doc` holds; raises the APIError an answer without one amounts to."""
        ...
