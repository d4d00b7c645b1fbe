"""Limits shared through Redis, by every process and machine that uses an endpoint.

Eight `uvicorn --workers` or four batch processes with one key each keep their own pool, and
together overrun the relay's limit. A `RedisLimiter` keeps each endpoint's places and starts in
Redis, so `max_concurrency` and `rpm` hold for all of them together::

    limiter = RedisLimiter("redis://127.0.0.1:6379/0")

Places are leases that expire `lease_ttl` seconds after their last renewal; a background task
renews the ones held every quarter of that, so a request may run for minutes, and a process
killed with -9 gives its places back within the TTL. A waiter hears of a freed place through
Redis pub/sub, and asks again at least every `poll_interval` in case a notice was lost or a
lease expired. Starts are reserved through one atomic script on Redis's own clock.

When Redis cannot be reached (`on_unreachable`):

- ``"local"`` (the default): carry on with a conservative local share of each limit, 1/N of
  `max_concurrency` (at least one place) and of `rpm`, N being the processes last seen sharing
  the endpoint in Redis (this one included), or `processes` if that is more, or
  `DEFAULT_ASSUMED_PROCESSES` if Redis was never reached. One warning per outage; Redis is asked
  again every quarter TTL, and the shared limits apply again as soon as it answers.
- ``"fail"``: each acquisition or start that cannot reach Redis raises `LimiterUnavailableError`
  before anything is sent.

Importing this module does not import `redis` (the optional extra ``gemimg-async[redis]``);
creating a `RedisLimiter` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import secrets
import socket
from collections.abc import Coroutine, Iterator
from typing import Any, Literal, TypeVar

import anyio
import attrs

from ._clock import Clock, SystemClock
from ._exceptions import ClientClosedError, ConfigurationError, LimiterUnavailableError
from ._limiter import Lease, LocalRate, Signals, check_limits, check_name
from ._limiter import check_positive as positive
from ._redis_store import Grant, Store, UnreachableError, redacted

__all__ = [
    "DEFAULT_ASSUMED_PROCESSES",
    "DEFAULT_LEASE_TTL",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "OnUnreachable",
    "RedisLimiter",
]

log = logging.getLogger("gemimg_async")
T = TypeVar("T")

DEFAULT_PREFIX = "gemimg"
DEFAULT_LEASE_TTL = 15.0
"""Seconds a place stays taken without renewal: how long a killed process keeps its places."""
DEFAULT_TIMEOUT = 2.0
"""Seconds to connect to Redis or wait for an answer before taking it as unreachable."""
DEFAULT_POLL_INTERVAL = 1.0
"""Longest a waiting process goes without asking Redis again for a place."""
DEFAULT_ASSUMED_PROCESSES = 8
"""Processes assumed to share an endpoint when Redis was never reached to count them."""

OnUnreachable = Literal["local", "fail"]


@attrs.define(eq=False)
class RedisLimiter:
    """A `SharedLimiter` kept in Redis: see the module's docstring."""

    url: str = attrs.field(repr=lambda url: repr(redacted(url)))
    prefix: str = attrs.field(default=DEFAULT_PREFIX, kw_only=True)
    lease_ttl: float = attrs.field(default=DEFAULT_LEASE_TTL, kw_only=True, validator=positive)
    on_unreachable: OnUnreachable = attrs.field(default="local", kw_only=True)
    processes: int | None = attrs.field(default=None, kw_only=True)
    """How many processes share each endpoint, for the local share (see the docstring)."""
    timeout: float = attrs.field(default=DEFAULT_TIMEOUT, kw_only=True, validator=positive)
    poll_interval: float = attrs.field(
        default=DEFAULT_POLL_INTERVAL, kw_only=True, validator=positive
    )
    burst: int = attrs.field(default=1, kw_only=True)
    """Starts that may follow each other at once after a quiet spell (a token bucket's size)."""
    clock: Clock = attrs.field(default=SystemClock(), kw_only=True, repr=False)
    """Where `start` waits, and the local share's rate reads time; leases live on Redis's."""
    waits: int = attrs.field(init=False, default=0)
    """Acquisitions that found no place free and had to wait."""
    outages: int = attrs.field(init=False, default=0)
    """Times Redis was found unreachable after answering (or at first)."""

    _store: Store = attrs.field(init=False, repr=False)
    _instance: str = attrs.field(init=False, repr=False)
    _tokens: Iterator[int] = attrs.field(init=False, repr=False, factory=itertools.count)
    _held: dict[str, set[str]] = attrs.field(init=False, repr=False, factory=dict)
    _peers: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)
    _signals: Signals = attrs.field(init=False, repr=False, factory=Signals)
    _rate: LocalRate = attrs.field(init=False, repr=False)
    _down: bool = attrs.field(init=False, repr=False, default=False)
    """Falling back to local shares (on_unreachable="local") until Redis answers again."""
    _outage: bool = attrs.field(init=False, repr=False, default=False)
    """Warned about the current outage already."""
    _task: asyncio.Task[None] | None = attrs.field(init=False, repr=False, default=None)
    _background: set[asyncio.Task[Any]] = attrs.field(init=False, repr=False, factory=set)
    _closed: bool = attrs.field(init=False, repr=False, default=False)

    def __attrs_post_init__(self) -> None:
        if self.on_unreachable not in ("local", "fail"):
            raise ConfigurationError(
                f'on_unreachable must be "local" or "fail", not {self.on_unreachable!r}'
            )
        if self.processes is not None:
            check_limits(max_concurrency=self.processes)
        check_limits(max_concurrency=self.burst)
        check_name("prefix", self.prefix)
        self._store = Store(self.url, self.prefix, self.timeout)
        self._instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._rate = LocalRate(self.clock, self.burst)

    # what callers read

    @property
    def where(self) -> str:
        """The Redis URL without its password, as logs and errors show it."""
        return self._store.where

    @property
    def shared(self) -> bool:
        """Whether the limits are shared through Redis now (False while on a local share)."""
        return not self._down

    def held(self, key: str) -> int:
        """Leases for `key` this limiter holds now."""
        return len(self._held.get(key, ()))

    # the SharedLimiter calls

    async def acquire(self, key: str, max_concurrency: int) -> Lease:
        """Wait for one of `max_concurrency` places for `key`, counted across every process."""
        check_limits(max_concurrency=max_concurrency)
        check_name("key", key)
        self._check_open()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=repr(self))
        held = self._held.setdefault(key, set())
        token = f"{self._instance}:{next(self._tokens)}"
        gate = self._signals.gate(key)
        waited = gate.locked()
        async with gate:
            while True:
                self._check_open()
                woken = self._signals.event(key)
                wait = await self._try(key, token, max_concurrency)
                if wait is None:
                    held.add(token)
                    self.waits += waited
                    return Lease(key, token)
                waited = True
                with anyio.move_on_after(wait):
                    await woken.wait()

    async def release(self, lease: Lease) -> None:
        """Give the place back; if cancelled meanwhile, the release finishes in the background."""
        held = self._held.get(lease.key, set())
        if lease.token not in held:
            return
        held.discard(lease.token)
        if self._down:
            self._signals.notify(lease.key)  # Redis forgets it within the TTL
            return
        await asyncio.shield(self._spawn(self._give_back(lease.key, lease.token)))

    async def start(self, key: str, rpm: float) -> None:
        """Wait for the start reserved for the next request to `key`, `rpm` a minute overall."""
        check_limits(rpm=rpm)
        check_name("key", key)
        self._check_open()
        wait: float | None = None
        if not self._down:
            try:
                wait = await self._talk(self._store.reserve(key, rpm, self.burst))
            except UnreachableError as exc:
                self._went_down(exc)
        if wait is None:
            wait = self._rate.reserve(key, rpm / self._processes(key))
        if wait > 0:
            await self.clock.sleep(wait)

    async def aclose(self) -> None:
        """Give back every place still held, leave the peers and close the connections."""
        if self._closed:
            return
        self._closed = True
        for key in list(self._held):
            self._signals.notify(key)  # waiters wake to find it closed
        if self._task is not None:
            self._task.cancel()  # bounded: a Redis client can hang on its way down
            if (await asyncio.wait([self._task], timeout=2 * self.timeout))[1]:
                log.warning("the shared limiter's renewals did not stop when closed: left behind")
        with anyio.move_on_after(2 * self.timeout, shield=True):
            if not self._down:
                with contextlib.suppress(UnreachableError, ConfigurationError):
                    await self._talk(self._leave())  # else the leases expire within the TTL
            if self._background:
                await asyncio.wait(self._background)
            await self._store.aclose()
        for task in self._background:
            task.cancel()
        self._held.clear()

    async def _try(self, key: str, token: str, maximum: int) -> float | None:
        """None when `token` got a place; else how long to wait before looking again."""
        if not self._down:
            try:
                grant = await self._ask(key, token, maximum)
            except UnreachableError as exc:
                self._went_down(exc)
            else:
                self._peers[key] = grant.peers
                return None if grant.granted else min(grant.retry_in + 0.001, self.poll_interval)
        share = max(1, maximum // self._processes(key))
        return None if self.held(key) < share else self.poll_interval

    async def _ask(self, key: str, token: str, maximum: int) -> Grant:
        """One attempt; whatever interrupts it, a place it may have taken is given back."""
        call = asyncio.ensure_future(
            self._talk(self._store.acquire(key, token, maximum, self.lease_ttl, self._instance))
        )
        try:
            return await asyncio.shield(call)
        except BaseException:
            call.add_done_callback(functools.partial(self._unless_refused, key, token))
            raise

    def _unless_refused(self, key: str, token: str, call: asyncio.Future[Grant]) -> None:
        refused = not call.cancelled() and call.exception() is None and not call.result().granted
        if not refused:
            self._spawn(self._give_back(key, token))

    async def _give_back(self, key: str, token: str) -> None:
        try:
            await self._talk(self._store.release(key, token))
        except UnreachableError as exc:
            self._went_down(exc, failing=False)  # the lease expires within the TTL
        except ConfigurationError as exc:  # refused credentials: acquisitions say so
            log.warning("%s; a place is left to expire", exc)
        finally:
            self._signals.notify(key)

    async def _leave(self) -> None:
        for key, tokens in self._held.items():
            for token in list(tokens):
                await self._store.release(key, token)
            await self._store.leave(key, self._instance)

    async def _talk(self, call: Coroutine[Any, Any, T]) -> T:
        """Await a call to the store; an answer ends the current outage's silence."""
        result = await call
        self._outage = False
        return result

    def _went_down(self, exc: UnreachableError, *, failing: bool = True) -> None:
        """Redis did not answer: warn once per outage, then fall back or fail."""
        local = self.on_unreachable == "local"
        if not self._outage:
            self._outage = True
            self.outages += 1
            then = "falls back to a local share of each limit" if local else "fails requests"
            log.warning(
                "the shared limiter cannot reach Redis at %s (%s): it %s", self.where, exc, then
            )
        if local:
            if not self._down:
                self._down = True
                for key in list(self._held):
                    self._signals.notify(key)  # waiters look again, at the local share
        elif failing:
            raise LimiterUnavailableError(
                f"the shared limiter cannot reach Redis at {self.where} ({exc}); nothing was "
                'sent (RedisLimiter(on_unreachable="local") carries on with a local share)'
            ) from exc.__cause__

    def _processes(self, key: str) -> int:
        seen = self._peers.get(key, 0)
        if self.processes is not None:
            return max(self.processes, seen)
        return seen or DEFAULT_ASSUMED_PROCESSES

    # the background: renewing leases, probing Redis, hearing releases

    async def _run(self) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self._listen)
            while True:
                await anyio.sleep(self.lease_ttl / 4)
                try:
                    await self._keep()
                except Exception:  # renewals must go on (refused credentials, a bug)
                    log.warning("renewing the shared limiter's leases failed", exc_info=True)

    async def _keep(self) -> None:
        """Renew every lease held (and count the peers); when down, see whether Redis is back."""
        came_back = self._down
        try:
            if came_back:
                await self._talk(self._store.ping())
            for key in list(self._held):
                tokens = sorted(self._held[key])
                peers, lapsed = await self._talk(
                    self._store.renew(key, tokens, self.lease_ttl, self._instance)
                )
                self._peers[key] = peers
                for token in set(tokens) - self._held[key]:  # released meanwhile: the renewal
                    self._spawn(self._give_back(key, token))  # may have written it back
                if (lapsed := lapsed & self._held[key]) and not came_back:
                    log.warning(
                        "%d lease(s) had lapsed in Redis at %s (a stall longer than the lease "
                        "TTL, or Redis lost its data); written back",
                        len(lapsed),
                        self.where,
                    )
        except UnreachableError as exc:
            self._went_down(exc, failing=False)
            return
        if came_back:
            self._down = False
            log.info("Redis at %s answers again: the limits are shared again", self.where)
            for key in list(self._held):
                self._signals.notify(key)

    async def _listen(self) -> None:
        """Wake this process's first waiter for a key when any process frees a place of it."""
        while True:
            try:
                async with contextlib.aclosing(self._store.releases(self.poll_interval)) as keys:
                    async for key in keys:
                        self._signals.notify(key)
            except UnreachableError:
                pass  # the commands tell outages; waiters poll meanwhile
            except Exception:  # waiters poll meanwhile
                log.warning("the shared limiter's pub/sub failed", exc_info=True)
            await anyio.sleep(self.lease_ttl / 4)

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("the limiter is closed")
