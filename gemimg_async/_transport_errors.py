"""How aiohttp's errors become ours: `map_aiohttp_errors`, the one place, around a request and
the reading of its body alike (as httpx's `map_httpcore_exceptions`).

What an error says about billing decides its class: a request never sent in full is a
ConnectError (safe to send again); one whose answer was lost is an OutcomeUnknownError (it may
be billed). A pooled connection the server had already closed, found closed before any byte of
an answer, carried a request the server never read: not sent either.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import attrs
from multidict import CIMultiDict, CIMultiDictProxy

from ._exceptions import (
    ClientClosedError,
    ConnectError,
    DownloadError,
    GemimgError,
    OutcomeUnknownError,
)

__all__ = ["Attempt", "map_aiohttp_errors"]


def _never() -> bool:
    return False


@attrs.define
class Attempt:
    """What one request's connection did: whether it was a pooled one, reused (the relay
    session's connector says), and whether an answer began."""

    reused: bool = False
    answered: bool = False


def map_aiohttp_errors(
    what: str,
    *,
    tracker: aiohttp.UploadTracker | None = None,
    attempt: Attempt | None = None,
    closed: Callable[[], bool] = _never,
    download_url: str | None = None,
) -> _Mapped:
    """Raise the error of ours that an aiohttp error within amounts to, chained `from` it.

    `tracker` tells a request never sent in full (ConnectError: safe to send again) from one
    whose answer was lost (OutcomeUnknownError: it may be billed); so does `attempt`: a pooled
    connection the server had closed, found closed before any byte of an answer, carried a
    request the server never read. `closed` says whether the client was closed under the
    request; with `download_url` every failure is a DownloadError. Errors that are not
    aiohttp's (a full disk, a bug) pass through as they are.
    """
    return _Mapped(what, tracker, attempt, closed, download_url)


@attrs.define
class _Mapped:
    """`map_aiohttp_errors`' context manager (a class: it is entered on every request)."""

    what: str
    tracker: aiohttp.UploadTracker | None
    attempt: Attempt | None
    closed: Callable[[], bool]
    download_url: str | None

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        del kind, tb  # the traceback's frames hold the request's headers: not kept by ours
        if exc is None or isinstance(exc, GemimgError):
            return
        if not isinstance(exc, aiohttp.ClientError | TimeoutError | RuntimeError):
            return
        # RuntimeError is aiohttp's word for a connection closed under a read: ours only then
        if isinstance(exc, RuntimeError) and not self.closed():
            return
        _scrub(exc)
        attempt = self.attempt
        stale = (
            attempt is not None
            and attempt.reused
            and not attempt.answered
            and isinstance(exc, aiohttp.ServerDisconnectedError)
        )
        closed = self.closed()
        raise _translate(
            exc, self.tracker, self.what, closed, self.download_url, stale=stale
        ) from exc


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
    closed: bool,
    download_url: str | None,
    *,
    stale: bool = False,
) -> GemimgError:
    reason = _describe(exc)
    if download_url is not None:
        return DownloadError(f"{what} failed: {reason}", url=download_url)
    sent = not stale and (tracker is None or _body_sent(tracker))
    if closed:
        if not sent:
            return ClientClosedError(f"{what}: the client was closed before it was sent")
        return OutcomeUnknownError(
            f"{what}: the client was closed while the request was in flight; "
            "the relay may have generated and billed it"
        )
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        return ConnectError(f"{what}: could not connect: {reason}")
    if stale:
        reason = "the relay had closed the kept-alive connection, unread"
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
