"""HTTP: the only module that speaks aiohttp, and the one place its errors become ours.

Two sessions, never mixed: one for the relay, which carries the key, and one for image hosts,
which never does. Relay answers that are not 2xx become `APIError`s here, from their status
and whatever shape of error body the relay chose.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, NoReturn

import aiohttp
import attrs
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from ._clock import Clock
from ._config import Timeouts
from ._exceptions import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    ConnectError,
    ContentPolicyError,
    DownloadError,
    GemimgError,
    ImageExpiredError,
    OutcomeUnknownError,
    RateLimitError,
    ServerError,
)
from ._pacing import Pacer
from ._retry import parse_retry_after

__all__ = [
    "ERROR_BODY_LIMIT",
    "Answer",
    "Transport",
    "api_error",
    "document_error",
    "endpoint_url",
    "error_fields",
]

log = logging.getLogger("gemimg_async")

ERROR_BODY_LIMIT = 64 * 1024
"""Bytes of an error answer read to find its message: error pages are short, or cut short."""
CHUNK_SIZE = 64 * 1024
KEEPALIVE_SECONDS = 5.0
_REQUEST_ID_HEADERS = ("x-request-id", "x-oneapi-request-id", "request-id", "openai-request-id")
_BLOCKED = re.compile(
    r"safety|blocked|content[ _-]?polic|moderation|prohibited|sensitive|违规|敏感|审核|不安全",
    re.IGNORECASE,
)
_TAGS = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.IGNORECASE | re.DOTALL)
_HEADERS = {"User-Agent": "gemimg-async"}


def endpoint_url(base_url: str, *, allow_insecure_http: bool = False) -> yarl.URL:
    """The generations endpoint under `base_url`, written with or without `/v1` (or as the
    endpoint itself)."""
    try:
        url = yarl.URL(base_url.strip())
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"base_url {base_url!r} is not a URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(
            f"base_url must be an http(s) URL such as 'https://api.example.com', not {base_url!r}"
        )
    if url.scheme == "http" and not allow_insecure_http and not _is_loopback(url.host):
        raise ConfigurationError(
            f"base_url {base_url!r} would send the API key unencrypted: use https, "
            "or pass allow_insecure_http=True for a relay you trust on your own network"
        )
    path = url.path.rstrip("/").removesuffix("/images/generations").removesuffix("/v1")
    return url.with_path(f"{path}/v1/images/generations").with_query(None).with_fragment(None)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@attrs.frozen
class Answer:
    """A 2xx answer whose body is still to be read, chunk by chunk."""

    status: int
    headers: Mapping[str, str]
    request_id: str | None
    chunks: AsyncIterator[bytes]


def _request_id(headers: Mapping[str, str]) -> str | None:
    return next((headers[name] for name in _REQUEST_ID_HEADERS if headers.get(name)), None)


@attrs.define
class Transport:
    """The client's HTTP sessions, opened lazily on the running loop and closed by `aclose`."""

    endpoint: yarl.URL
    _api_key: str = attrs.field(repr=False, alias="api_key")
    timeouts: Timeouts
    clock: Clock
    pacer: Pacer = attrs.Factory(Pacer)
    _api: aiohttp.ClientSession | None = attrs.field(default=None, repr=False)
    _files: aiohttp.ClientSession | None = attrs.field(default=None, repr=False)
    _closed: bool = False

    def _api_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosedError("the client is closed")
        if self._api is None:
            # The key lives in this session's headers only: not in any call's locals.
            self._api = aiohttp.ClientSession(
                connector=_connector(),
                headers={**_HEADERS, "Authorization": f"Bearer {self._api_key}"},
            )
        return self._api

    def _files_session(self) -> aiohttp.ClientSession:
        if self._files is None:
            self._files = aiohttp.ClientSession(connector=_connector(), headers=_HEADERS)
        return self._files

    def _is_closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        self._closed = True
        sessions, self._api, self._files = (self._api, self._files), None, None
        for session in sessions:
            if session is not None:
                await session.close()

    @asynccontextmanager
    async def generation(
        self, body: bytes, *, idempotency_key: str, model: str, timeouts: Timeouts | None = None
    ) -> AsyncIterator[Answer]:
        """POST one generation; yield its 2xx answer, or raise the error it amounts to."""
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        timeouts = timeouts or self.timeouts
        timeout = aiohttp.ClientTimeout(
            total=timeouts.total, connect=timeouts.connect, sock_read=timeouts.read_for(model)
        )
        tracker = aiohttp.UploadTracker()
        try:
            async with self._api_session().post(
                self.endpoint,
                data=io.BytesIO(body),  # streamed by aiohttp; raw bytes over 1 MB warn
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
                upload_tracker=tracker,
            ) as response:
                request_id = _request_id(response.headers)
                log.debug(
                    "POST %s -> %d (request id %s)", self.endpoint, response.status, request_id
                )
                if not 200 <= response.status < 300:  # noqa: PLR2004
                    body_head = await _read_head(response.content, ERROR_BODY_LIMIT)
                    raise api_error(
                        response.status,
                        response.headers,
                        body_head,
                        request_id=request_id,
                        now=self.clock.time(),
                    )
                yield Answer(
                    response.status,
                    response.headers,
                    request_id,
                    self.pacer.paced(response.content.iter_chunked(CHUNK_SIZE)),
                )
        except GemimgError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise_translated(exc, tracker, f"POST {self.endpoint}", self._is_closed)
        except RuntimeError as exc:  # aiohttp's word for reading a connection closed under us
            if not self._closed:
                raise
            raise_translated(exc, tracker, f"POST {self.endpoint}", self._is_closed)

    @asynccontextmanager
    async def download(
        self, url: str, timeouts: Timeouts | None = None, *, max_bytes: int
    ) -> AsyncIterator[Answer]:
        """GET an image URL without credentials; yield the 200 answer or raise DownloadError.

        An answer that announces more than `max_bytes` is refused before its body is read.

        After `aclose` a one-off session serves the call, so a result can still be saved.
        """
        timeouts = timeouts or self.timeouts
        timeout = aiohttp.ClientTimeout(
            total=timeouts.total, connect=timeouts.connect, sock_read=timeouts.download
        )
        async with AsyncExitStack() as stack:
            session = (
                self._files_session()
                if not self._closed
                else await stack.enter_async_context(aiohttp.ClientSession(headers=_HEADERS))
            )
            try:
                async with session.get(url, timeout=timeout) as response:
                    log.debug("GET %s -> %d", _safe_url(url), response.status)
                    if response.status in (403, 404, 410):
                        raise ImageExpiredError(
                            f"the image URL has expired (it answered {response.status}): relays "
                            "keep images about 24 hours, so download them as soon as they are made",
                            url=url,
                            status=response.status,
                        )
                    if (response.content_length or 0) > max_bytes:
                        raise DownloadError(
                            f"the image host announced {response.content_length} bytes, "
                            f"over the {max_bytes}-byte cap",
                            url=url,
                            status=response.status,
                        )
                    if response.status != 200:  # noqa: PLR2004
                        raise DownloadError(
                            f"the image host answered {response.status} {response.reason}",
                            url=url,
                            status=response.status,
                        )
                    yield Answer(
                        response.status,
                        response.headers,
                        _request_id(response.headers),
                        self.pacer.paced(response.content.iter_chunked(CHUNK_SIZE)),
                    )
            except GemimgError:
                raise
            except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
                if isinstance(exc, RuntimeError) and not self._closed:
                    raise
                raise_translated(exc, None, f"GET {_safe_url(url)}", None, download_url=url)


async def _read_head(content: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to `limit` bytes of an error answer: as much as arrives, for its status is the news."""
    head = bytearray()
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async for chunk in content.iter_chunked(CHUNK_SIZE):
            head += chunk
            if len(head) >= limit:
                break
    return bytes(head[:limit])


def _connector() -> aiohttp.TCPConnector:
    # The pool is ours; idle connections are dropped after 5 s (as httpx does), before most
    # servers drop them: a POST on a connection the server just closed would look sent.
    return aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS)


def _safe_url(url: str) -> str:
    """`url` without its query, where image hosts put signatures."""
    return str(yarl.URL(url).with_query(None).with_fragment(None))


def raise_translated(
    exc: Exception,
    tracker: aiohttp.UploadTracker | None,
    what: str,
    closed: Callable[[], bool] | None,
    *,
    download_url: str | None = None,
) -> NoReturn:
    """Raise the error of ours that an aiohttp error amounts to, telling a request never sent
    from one whose answer was lost. Called from an `except` clause: the one place aiohttp's
    errors become ours. (Errors that are not aiohttp's, a full disk or a bug, never come here.)
    """
    _scrub(exc)
    raise _translate(exc, tracker, what, closed, download_url) from exc


def _scrub(exc: BaseException) -> None:
    """Take the key out of an aiohttp error before it is chained onto ours, where tracebacks,
    loggers and error trackers (which print frames' locals) would show it.

    aiohttp's frames hold the request's headers in their locals, so the error and those it
    chains keep their messages but lose their tracebacks; a ClientResponseError also loses the
    Authorization header from the `request_info` it carries.
    """
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    if not isinstance(exc, aiohttp.ClientResponseError):
        return
    info = exc.request_info
    headers = CIMultiDict(info.headers)
    headers.popall("Authorization", None)
    clean = aiohttp.RequestInfo(info.url, info.method, CIMultiDictProxy(headers), info.real_url)
    exc.request_info = clean
    exc.args = (clean, *exc.args[1:])
    exc.history = ()


def _translate(
    exc: BaseException,
    tracker: aiohttp.UploadTracker | None,
    what: str,
    closed: Callable[[], bool] | None,
    download_url: str | None,
) -> GemimgError:
    reason = _describe(exc)
    if download_url is not None:
        return DownloadError(f"{what} failed: {reason}", url=download_url)
    sent = tracker is None or _body_sent(tracker)
    if closed is not None and closed():
        if not sent:
            return ClientClosedError(f"{what}: the client was closed before it was sent")
        return OutcomeUnknownError(
            f"{what}: the client was closed while the request was in flight; "
            "the relay may have generated and billed it"
        )
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        return ConnectError(f"{what}: could not connect: {reason}")
    if not sent:
        return ConnectError(f"{what}: {reason} before the request was sent in full")
    return OutcomeUnknownError(
        f"{what}: {reason} after the request was sent; the relay may have generated "
        "and billed it, so it is not sent again unless you opt in"
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return "no answer within the read timeout"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut short"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _body_sent(tracker: aiohttp.UploadTracker) -> bool:
    done = tracker.upload_complete
    return done.done() and not done.cancelled() and done.exception() is None


def error_fields(body: bytes) -> tuple[str, str | int | None]:
    """(message, code) from an error body of any shape relays use: JSON, HTML or text."""
    text = body.decode("utf-8-sig", "replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        message, code = document_error(doc)
        return message or text[:200], code
    if text.startswith("<"):
        text = " ".join(_TAGS.sub(" ", text).split())
    return text[:200] or "(empty body)", None


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
    return message, code


def api_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    request_id: str | None,
    now: float,
) -> APIError:
    """The error a relay's non-2xx answer amounts to; `now` is the wall clock, for HTTP dates."""
    message, code = error_fields(body)
    retry_after = parse_retry_after(headers, now)
    cls: type[APIError]
    if status in (401, 403):
        cls = AuthenticationError
    elif status == 429:  # noqa: PLR2004
        cls = RateLimitError
    elif status == 408 or status >= 500:  # noqa: PLR2004
        cls = ServerError
    elif _BLOCKED.search(f"{message} {code}"):
        cls = ContentPolicyError
    else:
        cls = BadRequestError
    if 300 <= status < 400:  # noqa: PLR2004
        message = (
            f"the relay redirected to {headers.get('Location', '?')}; use that address as base_url"
        )
    return cls(message, status=status, code=code, request_id=request_id, retry_after=retry_after)
