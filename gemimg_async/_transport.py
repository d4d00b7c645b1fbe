"""HTTP: the only module that speaks aiohttp (its errors become ours in `_transport_errors`).

Two sessions, never mixed: the `Relay`'s, which carries the key (or the caller's own, given as
`session=`), and the `ImageHost`'s, for image downloads, which never does. Both go through the
proxy and trust the certificates that `Network` says. `map_aiohttp_errors` turns aiohttp's
errors into ours around both a request and the reading of its body, telling a request never
sent from one whose answer was lost. Relay answers that are not 2xx become `APIError`s
(`_status`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import attrs
import yarl
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from ._clock import Clock
from ._config import Timeouts
from ._dialects import Outgoing
from ._exceptions import ClientClosedError, DownloadError, ImageExpiredError
from ._network import Network
from ._pacing import Pacer
from ._secrets import Secret
from ._status import ERROR_BODY_LIMIT, api_error, printable
from ._transport_errors import Attempt, map_aiohttp_errors

__all__ = ["Answer", "ImageHost", "Relay"]

log = logging.getLogger("gemimg_async")

CHUNK_SIZE = 64 * 1024
KEEPALIVE_SECONDS = 5.0
_REQUEST_ID_HEADERS = ("x-request-id", "x-oneapi-request-id", "request-id", "openai-request-id")
_HEADERS = {"User-Agent": "gemimg-async"}
_URLS_KEPT = 64
_INLINE_BODY = 1024 * 1024
"""Request bodies under this are handed to aiohttp as bytes: sent with the headers at once."""
WHOLE_ANSWER = 128 * 1024
"""An uncompressed answer that announces at most this many bytes is read in one call (when its
reader asks) and handed on as one chunk, unpaced: parsing it takes a fraction of a millisecond,
as aiohttp's own handling of it does (a `url` answer, a tiny image's)."""


@attrs.frozen
class Answer:
    """A 2xx answer whose body is still to be read, chunk by chunk."""

    status: int
    headers: Mapping[str, str]
    request_id: str | None
    chunks: AsyncIterator[bytes]


def _request_id(headers: Mapping[str, str]) -> str | None:
    found = next((headers[name] for name in _REQUEST_ID_HEADERS if headers.get(name)), None)
    return None if found is None else printable(found)[:200] or None


_ATTEMPT: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar(
    "gemimg_attempt", default=None
)
"""The attempt the current task is making through the relay's session (set by `Relay.post`)."""


class _Connector(aiohttp.TCPConnector):
    """aiohttp's pool, telling the attempt being made whether its connection was used before
    (aiohttp's trace signals would say it too, at several objects per request)."""

    def __init__(self) -> None:
        # The pool is ours; idle connections are dropped after 5 s (as httpx does), before most
        # servers drop them: a POST on a connection the server just closed would look sent.
        super().__init__(limit=0, keepalive_timeout=KEEPALIVE_SECONDS)
        self._used: weakref.WeakSet[object] = weakref.WeakSet()

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        attempt = _ATTEMPT.get()
        protocol = connection.protocol
        if attempt is not None and protocol is not None:
            attempt.reused = protocol in self._used
            if not attempt.reused:
                self._used.add(protocol)
        return connection


def _safe_url(url: str | yarl.URL) -> str:
    """`url` without its query, where image hosts put signatures."""
    return str(yarl.URL(url).with_query(None).with_fragment(None))


@functools.lru_cache(maxsize=64)
def _post_what(url: yarl.URL) -> str:
    """`POST {url}` as errors and logs name a relay request (one client has few URLs)."""
    return f"POST {_safe_url(url)}"


@functools.lru_cache(maxsize=64)
def _timeout(
    total: float | None, connect: float | None, read: float | None
) -> aiohttp.ClientTimeout:
    """aiohttp's (frozen) timeout object, made once per set of values, not per request."""
    return aiohttp.ClientTimeout(total=total, connect=connect, sock_read=read)


async def _read_head(content: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to `limit` bytes of an error answer: as much as arrives, for its status is the news."""
    head = bytearray()
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async for chunk in content.iter_chunked(CHUNK_SIZE):
            head += chunk
            if len(head) >= limit:
                break
    return bytes(head[:limit])


def _secrets(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: Secret(value) for name, value in headers.items()}


@attrs.define
class Relay:
    """The session that carries the key, opened lazily on the running loop."""

    _auth: Mapping[str, str] = attrs.field(repr=False, alias="auth", converter=_secrets)
    """The headers that carry the key (as `Secret`s): in this session's headers when no proxy
    can be used and the session is ours, else on each request (see `_network`)."""
    timeouts: Timeouts
    clock: Clock
    pacer: Pacer
    network: Network = attrs.Factory(Network)
    _session: aiohttp.ClientSession | None = attrs.field(default=None, repr=False)
    _closed: bool = False
    _known: dict[yarl.URL, tuple[Mapping[str, str], Mapping[str, Any]]] = attrs.field(
        factory=dict, repr=False
    )

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosedError("the client is closed")
        given = self.network.session
        if given is not None:
            if given.closed:
                raise ClientClosedError("the aiohttp session given as session= was closed")
            return given
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=_Connector(),
                headers={**_HEADERS, **self._auth} if self.network.key_in_session else _HEADERS,
            )
        return self._session

    def _per_request(self, url: yarl.URL) -> tuple[Mapping[str, str], Mapping[str, Any]]:
        """The headers and aiohttp options a request to `url` adds to its session's: worked out
        once per URL (a client has few), unless proxies come from the environment."""
        known = self._known.get(url)
        if known is not None:
            return known
        options = self.network.options(url)
        if self.network.key_in_session:
            known = {}, options
        else:
            self.network.check_relay(url)
            if self.network.session is not None:  # the caller's: answers are read as ours are
                options |= {"raise_for_status": False, "auto_decompress": True}
                known = {**_HEADERS, **self._auth}, options
            else:
                known = dict(self._auth), options
        if not self.network.trust_env and len(self._known) < _URLS_KEPT:
            self._known[url] = known
        return known

    def is_closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """Close the session; one given as `session=` is the caller's to close."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @asynccontextmanager
    async def post(
        self,
        outgoing: Outgoing,
        *,
        idempotency_key: str,
        model: str,
        timeouts: Timeouts | None = None,
    ) -> AsyncIterator[Answer]:
        """POST one generation; yield its 2xx answer, or raise the error it amounts to."""
        auth, options = self._per_request(outgoing.url)
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
            **outgoing.headers,
            **auth,
        }
        timeouts = timeouts or self.timeouts
        timeout = _timeout(timeouts.total, timeouts.connect, timeouts.read_for(model))
        tracker = aiohttp.UploadTracker()
        attempt = Attempt()
        what = _post_what(outgoing.url)
        body = outgoing.body
        _ATTEMPT.set(attempt)  # for this task's next connection: its own, ours the only sets
        with map_aiohttp_errors(what, tracker=tracker, attempt=attempt, closed=self.is_closed):
            async with self._open().post(
                outgoing.url,
                # small bodies go with the headers in one write; larger ones are streamed by
                # aiohttp (raw bytes over 1 MB warn)
                data=body if len(body) < _INLINE_BODY else io.BytesIO(body),
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
                upload_tracker=tracker,
                **options,
            ) as response:
                attempt.answered = True
                request_id = _request_id(response.headers)
                log.debug("%s -> %d (request id %s)", what, response.status, request_id)
                if not 200 <= response.status < 300:  # noqa: PLR2004
                    body_head = await _read_head(response.content, ERROR_BODY_LIMIT)
                    raise api_error(
                        response.status,
                        response.headers,
                        body_head,
                        request_id=request_id,
                        now=self.clock.time(),
                        model=model,
                    )
                length = response.content_length
                if length is not None and length <= WHOLE_ANSWER and _identity(response):
                    chunks = _whole(response.read)
                else:
                    chunks = self.pacer.paced(response.content.iter_chunked(CHUNK_SIZE))
                yield Answer(response.status, response.headers, request_id, chunks)


async def _whole(read: Callable[[], Awaitable[bytes]]) -> AsyncIterator[bytes]:
    """A small body as one chunk, read when the parser first asks (after the answer is seen)."""
    yield await read()


def _identity(response: aiohttp.ClientResponse) -> bool:
    """Whether the body is what Content-Length counts: no Content-Encoding to inflate it."""
    encoding = response.headers.get("Content-Encoding")
    return encoding is None or encoding.strip().lower() in {"", "identity"}


@attrs.define
class ImageHost:
    """The session for image downloads: it never carries the key.

    Once closed (or unpickled with a result) it still downloads, through a one-off session per
    call, so a result can be saved after its client is gone.
    """

    pacer: Pacer = attrs.Factory(Pacer)
    network: Network = attrs.Factory(Network)
    """The client's proxy and trust; never its key, nor the caller's `session=`."""
    _session: aiohttp.ClientSession | None = attrs.field(default=None, repr=False)
    _closed: bool = False

    def __getstate__(self) -> dict[str, Any]:
        return {
            "pacer": Pacer(),
            "network": self.network.portable(),
            "_session": None,
            "_closed": True,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def is_closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @asynccontextmanager
    async def download(
        self, url: str, timeouts: Timeouts, *, max_bytes: int
    ) -> AsyncIterator[Answer]:
        """GET an image URL without credentials; yield the 200 answer or raise DownloadError.

        An answer that announces more than `max_bytes` is refused before its body is read.
        """
        timeout = aiohttp.ClientTimeout(
            total=timeouts.total, connect=timeouts.connect, sock_read=timeouts.download
        )
        async with AsyncExitStack() as stack:
            if self._closed:
                session = await stack.enter_async_context(aiohttp.ClientSession(headers=_HEADERS))
            else:
                if self._session is None:
                    self._session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(
                            limit=0, keepalive_timeout=KEEPALIVE_SECONDS
                        ),
                        headers=_HEADERS,
                    )
                session = self._session
            what = f"GET {_safe_url(url)}"
            with map_aiohttp_errors(what, closed=self.is_closed, download_url=url):
                options = self.network.options(yarl.URL(url))
                async with session.get(url, timeout=timeout, **options) as response:
                    log.debug("%s -> %d", what, response.status)
                    _check_download(response, url, max_bytes)
                    yield Answer(
                        response.status,
                        response.headers,
                        _request_id(response.headers),
                        self.pacer.paced(response.content.iter_chunked(CHUNK_SIZE)),
                    )


def _check_download(response: aiohttp.ClientResponse, url: str, max_bytes: int) -> None:
    if response.status in (403, 404, 410):
        raise ImageExpiredError(
            f"the image URL has expired (it answered {response.status}): relays keep images "
            "about 24 hours, so download them as soon as they are made",
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
            f"the image host answered {response.status} {printable(response.reason or '')}",
            url=url,
            status=response.status,
        )
