"""The limiter interface a pool puts its places and starts behind, and its in-process kind.

A `SharedLimiter` holds, per endpoint `key`, at most `max_concurrency` leases at once and lets
requests start at most `rpm` times a minute; the caller passes both with every call, so their
values stay the client's arguments. `LocalLimiter` keeps them in this process (what one client
alone needs); `gemimg_async.redis.RedisLimiter` keeps them in Redis, shared by every process and
machine that uses the same endpoint.

A pool calls, per request::

    lease = await limiter.acquire(key, max_concurrency)   # a place, held while the request runs
    try:
        await limiter.start(key, rpm)                      # then its start, under the rate
        ...                                                # send, read the answer
    finally:
        await limiter.release(lease)

Keys name an endpoint without revealing it: `endpoint_key(base_url, api_key)`.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import secrets
from typing import Any, Protocol, runtime_checkable

import attrs

from ._clock import Clock, SystemClock
from ._exceptions import ClientClosedError, ConfigurationError

__all__ = [
    "Lease",
    "LocalLimiter",
    "LocalRate",
    "SharedLimiter",
    "Signals",
    "check_limits",
    "check_name",
    "check_positive",
    "endpoint_key",
]


def endpoint_key(base_url: str, api_key: str) -> str:
    """The limiter key of an endpoint: every process using this key on this relay shares it.

    A digest, so neither the key nor the URL is written anywhere a limiter keeps its state.
    """
    seed = "\0".join(("gemimg-async endpoint", base_url.rstrip("/"), api_key))
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def check_limits(*, max_concurrency: int | None = None, rpm: float | None = None) -> None:
    """Refuse limits no limiter can keep."""
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int)
    ):
        raise ConfigurationError(f"max_concurrency must be a whole number, not {max_concurrency!r}")
    if max_concurrency is not None and max_concurrency < 1:
        raise ConfigurationError(f"max_concurrency must be at least 1, not {max_concurrency}")
    if rpm is not None and not (isinstance(rpm, int | float) and 0 < rpm < math.inf):
        raise ConfigurationError(f"rpm must be above 0, not {rpm!r}")


def check_positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """An attrs validator: a number of seconds (or such) above 0."""
    if not (isinstance(value, int | float) and 0 < value < math.inf):
        raise ConfigurationError(f"{attribute.name} must be above 0, not {value!r}")


def check_name(what: str, value: str) -> None:
    """A key or prefix: not empty, and without the braces of a Redis Cluster hash tag."""
    if not isinstance(value, str) or not value or "{" in value or "}" in value:
        raise ConfigurationError(f"a limiter {what} is a non-empty name without braces: {value!r}")


@attrs.frozen
class Lease:
    """A place held under a limiter: give it back with `release`."""

    key: str
    token: str
    """Unique among every lease of every process sharing the limiter."""


@runtime_checkable
class SharedLimiter(Protocol):
    """Places and starts per endpoint key; see the module's docstring for the calls' order."""

    async def acquire(self, key: str, max_concurrency: int) -> Lease:
        """Wait for one of `max_concurrency` places for `key`; cancelling never leaks one."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give the place back (at once, whatever happens around it); a second release is a
        no-op."""
        ...

    async def start(self, key: str, rpm: float) -> None:
        """Wait until a request for `key` may start, at most `rpm` starts a minute."""
        ...

    async def aclose(self) -> None:
        """Give back every lease still held and stop; the limiter cannot be used after."""
        ...


@attrs.define
class LocalRate:
    """Starts per key, reserved in arrival order: a token bucket of `burst` refilled `rpm`
    times a minute (the generic cell rate algorithm, as the Redis script runs it).

    Each call reserves the next start and returns how long to wait for it, so waiters start in
    the order they asked, each exactly one interval after the one before once the burst is spent.
    """

    clock: Clock = SystemClock()
    burst: int = 1
    _theoretical: dict[str, float] = attrs.Factory(dict)
    """Per key: when the bucket will be full again, given the starts reserved so far."""

    def reserve(self, key: str, rpm: float) -> float:
        """Reserve a start for `key`; the seconds to wait for it."""
        now = self.clock.monotonic()
        interval = 60.0 / rpm
        full = max(self._theoretical.get(key, now), now)
        start = max(now, full - interval * (self.burst - 1))
        self._theoretical[key] = full + interval
        return start - now


@attrs.define
class Signals:
    """Per key, a FIFO gate for this process's waiters and a wake-up for the first of them.

    Only the waiter holding the gate asks the shared store for a place, so a release costs one
    attempt per process, not one per waiting request, and a process's requests are served in
    the order they asked.
    """

    _gates: dict[str, asyncio.Lock] = attrs.Factory(dict)
    _events: dict[str, asyncio.Event] = attrs.Factory(dict)

    def gate(self, key: str) -> asyncio.Lock:
        return self._gates.setdefault(key, asyncio.Lock())

    def event(self, key: str) -> asyncio.Event:
        """Set by the next `notify(key)`: take it before looking, then wait on it."""
        return self._events.setdefault(key, asyncio.Event())

    def notify(self, key: str) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()


@attrs.define
class LocalLimiter:
    """A `SharedLimiter` kept in this process: what a client alone needs, and a stand-in for
    the Redis limiter in tests."""

    clock: Clock = SystemClock()
    burst: int = 1
    waits: int = 0
    """Acquisitions that found no place free and had to wait."""
    _held: dict[str, set[str]] = attrs.Factory(dict)
    _signals: Signals = attrs.Factory(Signals)
    _rate: LocalRate = attrs.field(init=False)
    _tokens: itertools.count[int] = attrs.Factory(itertools.count)
    _prefix: str = attrs.Factory(lambda: secrets.token_hex(4))
    _closed: bool = False

    def __attrs_post_init__(self) -> None:
        self._rate = LocalRate(self.clock, self.burst)

    def held(self, key: str) -> int:
        """Leases for `key` held now."""
        return len(self._held.get(key, ()))

    async def acquire(self, key: str, max_concurrency: int) -> Lease:
        check_limits(max_concurrency=max_concurrency)
        self._check_open()
        held = self._held.setdefault(key, set())
        gate = self._signals.gate(key)
        if gate.locked() or len(held) >= max_concurrency:
            self.waits += 1
        async with gate:
            while len(held) >= max_concurrency:
                await self._signals.event(key).wait()
            self._check_open()
            lease = Lease(key, f"{self._prefix}:{next(self._tokens)}")
            held.add(lease.token)
            return lease

    async def release(self, lease: Lease) -> None:
        held = self._held.get(lease.key, set())
        if lease.token in held:
            held.discard(lease.token)
            self._signals.notify(lease.key)

    async def start(self, key: str, rpm: float) -> None:
        check_limits(rpm=rpm)
        self._check_open()
        wait = self._rate.reserve(key, rpm)
        if wait > 0:
            await self.clock.sleep(wait)

    async def aclose(self) -> None:
        self._closed = True
        for key in list(self._held):
            self._held[key].clear()
            self._signals.notify(key)  # waiters wake to find it closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("the limiter is closed")
