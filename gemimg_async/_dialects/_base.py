"""What every dialect is made of: the request it writes and what it reads in an answer."""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, TypeAlias

import attrs
import yarl

from .._exceptions import APIError, ConfigurationError, MalformedResponseError, RefusalError
from .._jsonstream import Diverted, DivertedText, Path, Schema
from .._models import ImageRequest, Usage
from .._status import document_error, printable

__all__ = [
    "SIZE_STYLES",
    "Dialect",
    "Found",
    "Outgoing",
    "Reading",
    "SizeStyle",
    "base_url",
    "blob",
    "created_of",
    "dump",
    "join",
    "keep_last",
    "merged",
    "missing_endpoint",
    "no_image",
]

log = logging.getLogger("gemimg_async")

SizeStyle: TypeAlias = Literal["ratio", "pixels", "image_config", "google"]
SIZE_STYLES: tuple[SizeStyle, ...] = ("ratio", "pixels", "image_config", "google")
"""How the size travels: `size: "16:9"`; `size: "5504x3072"` (the tier's pixel size);
`image_config: {aspect_ratio, image_size}` (OpenRouter); `extra_body.google.image_config`
(new-api's chat). The gemini dialect always sends `generationConfig.imageConfig`."""

_DIALECT_PATHS = ("/images/generations", "/chat/completions")
"""Endpoint paths a user may paste as the base URL; the dialect adds its own."""
_BLOB = "@@gemimg-blob-{}@@"


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
    path = path.removesuffix("/v1").removesuffix("/v1beta")
    return parsed.with_path(path or "/").with_query(None).with_fragment(None)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=64)  # a client's few endpoints, on every request
def join(base: yarl.URL, path: str) -> yarl.URL:
    """`base` with `path` (no leading slash) appended to its own path."""
    return base.with_path(f"{base.path.rstrip('/')}/{path}", encoded=True)


def blob(number: int) -> str:
    """The placeholder for the `number`-th pre-encoded JSON value given to `dump`."""
    return _BLOB.format(number)


def dump(doc: Any, blobs: Sequence[bytes]) -> bytes:
    """`doc` as JSON, each `blob(i)` string replaced by `blobs[i]` (JSON, already encoded).

    Inline images are megabytes of checked base64: joined as bytes, they are neither scanned by
    `json.dumps` nor copied more than once.
    """
    text = json.dumps(doc, ensure_ascii=False).encode()
    parts: list[bytes] = []
    for number, value in enumerate(blobs):
        head, _, text = text.partition(f'"{blob(number)}"'.encode())
        parts += (head, value)
    parts.append(text)
    return b"".join(parts)


def merged(doc: dict[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """`doc` with `extra` merged in: objects merged key by key, anything else replaced."""
    if not extra:
        return doc
    out = dict(doc)
    for key, value in extra.items():
        mine = out.get(key)
        out[key] = (
            merged(mine, value) if isinstance(mine, dict) and isinstance(value, Mapping) else value
        )
    return out


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

    path: Path | None = None
    url: str | None = None
    inline: str | None = None

    @classmethod
    def of(cls, value: Any) -> Found | None:
        """The image a string value of an answer holds, if any."""
        if isinstance(value, Diverted):
            return cls(path=value.path) if value.size else None
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return cls(url=value)
        if isinstance(value, str) and value.strip():
            return cls(inline=value)
        return None


@attrs.frozen
class Reading:
    """What an answer with images says: the images, in order, and what came with them."""

    images: tuple[Found, ...]
    created: int | None = None
    usage: Usage | None = None
    text: str | None = None
    """The model's commentary, when the dialect carries one."""


def missing_endpoint(error: APIError) -> bool:
    """Whether `error` says the relay has no such endpoint (a 404 that is not about a model)."""
    return error.status == 404 and "model" not in f"{error.message} {error.code}".lower()  # noqa: PLR2004


_LATEST_CREATED = 2**34
"""Unix seconds of the year 2514: a `created` past it (or before 1970) is no time at all."""


def created_of(doc: Any) -> int | None:
    """The answer's `created` (Unix seconds) when it is one; None for anything else (a relay's
    1e20 is ignored, not fatal: the image it came with is paid for)."""
    created = doc.get("created") if isinstance(doc, dict) else None
    if isinstance(created, int) and not isinstance(created, bool):
        if 0 <= created < _LATEST_CREATED:
            return created
        log.warning("the relay's answer says it was created at %d: ignored", created)
    return None


def keep_last(found: list[Found], n: int) -> list[Found]:
    """The last `n` of `found`: relays that flatten the model's draft images into the answer
    send them first and the final image last."""
    if len(found) <= n:
        return found
    log.info(
        "the relay sent %d images for n=%d: keeping the last %d (earlier ones are drafts)",
        len(found),
        n,
        n,
    )
    return found[-n:]


def no_image(
    doc: Any, request_id: str | None, *, why: str | None, code: str | int | None = None
) -> APIError:
    """What a 200 answer without an image means: an error body, a refusal `why` (with the
    dialect's `code` for it), or garbage."""
    if isinstance(doc, dict):
        message, error_code = document_error(doc)
        if message is not None or "error" in doc:
            return RefusalError(
                f"the relay answered 200 with an error: {message or doc.get('error')}",
                status=200,
                code=error_code,
                request_id=request_id,
            )
        if why is not None:
            return RefusalError(why, status=200, code=code, request_id=request_id)
    return MalformedResponseError(
        f"the relay answered 200 without an image: {_outline(doc)}",
        status=200,
        request_id=request_id,
    )


def _outline(doc: Any, budget: int = 200) -> str:
    """A short, bounded sketch of a document: never the whole of a deep or huge one."""
    text = json.dumps(doc, default=_marker, ensure_ascii=False, check_circular=False)[:budget]
    return printable(text) if len(text) < budget else f"{printable(text)}..."


def _marker(value: Any) -> str:
    if isinstance(value, DivertedText):
        return value.text[:80]
    return f"<{type(value).__name__}>"


class Dialect(Protocol):
    """How one shape of relay API is spoken."""

    @property
    def name(self) -> str: ...

    @property
    def schema(self) -> Schema:
        """Where this dialect's answers keep image strings, for the streaming parser."""
        ...

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """The headers that carry the key: kept in the relay session, never in a call."""
        ...

    def outgoing(self, base: yarl.URL, request: ImageRequest, images: Sequence[str]) -> Outgoing:
        """The HTTP request for `request`, with `images` as the encoded inputs."""
        ...

    def read(self, doc: Any, request: ImageRequest, *, request_id: str | None) -> Reading:
        """The images `doc` holds; raises the APIError an answer without one amounts to."""
        ...

    def explain(self, error: APIError) -> None:
        """Add to `error`'s message what it means for this dialect (another to try, say)."""
        ...
