"""HTTP to the relay: with `_imagehost`, the only modules that speak aiohttp (its errors become
ours in `_transport_errors`).

Two sessions, never mixed: the `Relay`'s, which carries the key (or the caller's own, given as
`session=`), and the `ImageHost`'s (`_imagehost`), for image downloads, which never does. Both
go through the proxy and trust the certificates that `Network` says. `map_aiohttp_errors`
turns aiohttp's errors into ours around both a request and the reading of its body, telling a
request never sent from one whose answer was lost. Relay answers that are not 2xx become
`APIError`s (`_status`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
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
from ._exceptions import ClientClosedError
from ._network import Network
from ._pacing import Pacer
from ._secrets import Secret
from ._status import ERROR_BODY_LIMIT, api_error, printable
from ._transport_errors import Attempt, map_aiohttp_errors

__all__ = [
    "CHUNK_SIZE",
    "HEADERS",
    "KEEPALIVE_SECONDS",
    "Answer",
    "Relay",
    "SessionOwner",
    "request_id_of",
    "safe_url",
]

log = logging.getLogger("gemimg_async")

CHUNK_SIZE = 64 * 1024
KEEPALIVE_SECONDS = 5.0
_REQUEST_ID_HEADERS = ("x-request-id", "x-oneapi-request-id", "request-id", "openai-request-id")
HEADERS = {"User-Agent": "gemimg-async"}
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


def request_id_of(headers: Mapping[str, str]) -> str | None:
    for name in _REQUEST_ID_HEADERS:
        if found := headers.get(name):
            return printable(found)[:200] or None
    return None


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


def safe_url(url: str | yarl.URL) -> str:
    """`url` without its query, where image hosts put signatures."""
    return str(yarl.URL(url).with_query(None).with_fragment(None))


@functools.lru_cache(maxsize=64)
def _post_what(url: yarl.URL) -> str:
    """`POST {url}` as errors and logs name a relay request (one client has few URLs)."""
    return f"POST {safe_url(url)}"


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


class SessionOwner:
    """A session of its own, opened lazily and closed once: `Relay`'s and `ImageHost`'s."""

    __slots__ = ("_closed", "_session")
    _session: aiohttp.ClientSession | None
    _closed: bool

    def is_closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """Close the session; one given as `session=` is the caller's to close."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


@attrs.define
class Relay(SessionOwner):
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
                headers={**HEADERS, **self._auth} if self.network.key_in_session else HEADERS,
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
                known = {**HEADERS, **self._auth}, options
            else:
                known = dict(self._auth), options
        if not self.network.trust_env and len(self._known) < _URLS_KEPT:
            self._known[url] = known
        return known

    def post(
        self,
        outgoing: Outgoing,
        *,
        idempotency_key: str,
        model: str,
        timeouts: Timeouts | None = None,
    ) -> _Post:
        """POST one generation: `async with` it for its 2xx answer, or the error it amounts to
        (raised, as are aiohttp's errors while its body is read, as ours)."""
        return _Post(self, outgoing, idempotency_key, model, timeouts or self.timeouts)


class _Post:
    """`Relay.post`'s context manager: a class, not a generator, for it runs on every request."""

    __slots__ = ("_context", "_key", "_mapped", "_model", "_outgoing", "_relay", "_timeouts")

    def __init__(
        self, relay: Relay, outgoing: Outgoing, key: str, model: str, timeouts: Timeouts
    ) -> None:
        self._relay, self._outgoing, self._key = relay, outgoing, key
        self._model, self._timeouts = model, timeouts
        self._context: Any = None
        self._mapped: Any = None

    async def __aenter__(self) -> Answer:
        relay, outgoing, model, timeouts = self._relay, self._outgoing, self._model, self._timeouts
        auth, options = relay._per_request(outgoing.url)  # noqa: SLF001 - its own helper
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": self._key,
            **outgoing.headers,
            **auth,
        }
        timeout = _timeout(timeouts.total, timeouts.connect, timeouts.read_for(model))
        tracker = aiohttp.UploadTracker()
        attempt = Attempt()
        what = _post_what(outgoing.url)
        body = outgoing.body
        self._mapped = mapped = map_aiohttp_errors(
            what, tracker=tracker, attempt=attempt, closed=relay.is_closed
        )
        _ATTEMPT.set(attempt)  # for this task's next connection: its own, ours the only sets
        with mapped:
            context = relay._open().post(  # noqa: SLF001
                outgoing.url,
                # small bodies go with the headers in one write; larger ones are streamed by
                # aiohttp (raw bytes over 1 MB warn)
                data=body if len(body) < _INLINE_BODY else io.BytesIO(body),
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
                upload_tracker=tracker,
                **options,
            )
            response = await context.__aenter__()
            self._context = context
            try:
                attempt.answered = True
                return await _answer(response, what, model, relay)
            except BaseException as error:
                self._context = None
                await context.__aexit__(type(error), error, error.__traceback__)
                raise

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> None:
        context, self._context = self._context, None
        with self._mapped:  # what reading the body raised, and the release, as ours
            await context.__aexit__(kind, error, tb)
            if error is not None:
                self._mapped.__exit__(kind, error, None)


async def _answer(response: aiohttp.ClientResponse, what: str, model: str, relay: Relay) -> Answer:
    """The 2xx `response` as an Answer whose body is still to read; APIError otherwise."""
    request_id = request_id_of(response.headers)
    log.debug("%s -> %d (request id %s)", what, response.status, request_id)
    if not 200 <= response.status < 300:  # noqa: PLR2004
        body_head = await _read_head(response.content, ERROR_BODY_LIMIT)
        raise api_error(
            response.status,
            response.headers,
            body_head,
            request_id=request_id,
            now=relay.clock.time(),
            model=model,
        )
    length = response.content_length
    if length is not None and length <= WHOLE_ANSWER and _identity(response):
        chunks: AsyncIterator[bytes] = _Whole(response.read)
    else:
        chunks = relay.pacer.paced(response.content.iter_chunked(CHUNK_SIZE))
    return Answer(response.status, response.headers, request_id, chunks)


class _Whole:
    """A small body as one chunk, read when the parser first asks (after the answer is seen):
    an iterator of its own, not an async generator (the loop tracks each of those)."""

    __slots__ = ("_read",)

    def __init__(self, read: Callable[[], Awaitable[bytes]] | None) -> None:
        self._read = read

    def __aiter__(self) -> _Whole:
        return self

    async def __anext__(self) -> bytes:
        read, self._read = self._read, None
        if read is None:
            raise StopAsyncIteration
        return await read()


def _identity(response: aiohttp.ClientResponse) -> bool:
    """Whether the body is what Content-Length counts: no Content-Encoding to inflate it."""
    encoding = response.headers.get("Content-Encoding")
    return encoding is None or encoding.strip().lower() in {"", "identity"}
