"""The client-wide pool: how many generations may be in flight, and how fast they may start."""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import attrs

from ._clock import Clock, SystemClock
from ._exceptions import ConfigurationError, PoolTimeoutError
from ._limiter import Lease as SharedLease
from ._limiter import SharedLimiter

__all__ = [
    "DEFAULT_DECREASE_FACTOR",
    "DEFAULT_INCREASE_AFTER",
    "MIN_SHARED_WAIT",
    "AdaptiveLimit",
    "Place",
    "Pool",
    "RateLimit",
    "Shared",
    "Slot",
    "check_pool_timeout",
]

T = TypeVar("T")

DEFAULT_DECREASE_FACTOR = 0.7
"""On 429/503 the in-flight limit is multiplied by this (and kept at least 1)."""
DEFAULT_INCREASE_AFTER = 10
"""Successes in a row after which the in-flight limit grows by one, up to its maximum."""
MIN_SHARED_WAIT = 0.1
"""Seconds a shared limiter is given at least under a `pool_timeout` (a Redis round trip)."""


def check_pool_timeout(seconds: float | None) -> float | None:
    """A `pool_timeout`: None (wait as long as it takes) or seconds, 0 or more."""
    if seconds is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0
    ):
        raise ConfigurationError(
            f"pool_timeout is None (wait for a place) or seconds, 0 or more; not {seconds!r}"
        )
    return seconds


@attrs.frozen(eq=False)
class Slot:
    """A place in the pool; `epoch` tells which limit it was granted under."""

    epoch: int


@attrs.define
class AdaptiveLimit:
    """At most `limit` holders at once; the limit shrinks on throttling and grows back (AIMD).

    One throttling answer shrinks the limit once per epoch: the requests that were already in
    flight when it shrank are answered by the same overloaded relay, and their 429s say nothing
    new. The limit may drop below what is in flight: holders keep their places and newcomers
    wait.

    A place is a counter while there is room (no await, no copy, no system call: `try_acquire`);
    otherwise the newcomer parks on a future at the back of a FIFO queue and is handed a place,
    already counted as its own, when one is given back or the limit grows. A waiter cancelled
    after being handed one passes it on; a cancelled waiter's future stays in the queue, skipped,
    so a cancellation costs O(1) too. (A `pool_timeout` is a timeout around that wait: a waiter
    that gives up has sent nothing and holds nothing.)
    """

    maximum: int
    decrease_factor: float = DEFAULT_DECREASE_FACTOR
    increase_after: int = DEFAULT_INCREASE_AFTER
    waits: int = 0
    """Acquisitions that found the pool full and had to wait."""
    _limit: int = attrs.field(init=False)
    _held: set[Slot] = attrs.field(init=False, factory=set, repr=False)
    """The places given and not given back: counted, never copied."""
    _handed: int = attrs.field(init=False, default=0)
    """Places handed to waiters that have not resumed yet (counted in flight)."""
    _queue: collections.deque[asyncio.Future[None]] = attrs.field(
        init=False, factory=collections.deque, repr=False
    )
    _waiting: int = attrs.field(init=False, default=0)
    _epoch: int = 0
    _successes: int = 0

    def __attrs_post_init__(self) -> None:
        if self.maximum < 1:
            raise ConfigurationError(f"max_concurrency must be at least 1, not {self.maximum}")
        self._limit = self.maximum

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return len(self._held) + self._handed

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def room(self) -> bool:
        """Whether `try_acquire` would get a place now."""
        return not self._waiting and len(self._held) + self._handed < self._limit

    def try_acquire(self) -> Slot | None:
        """A place at once if there is room and nobody is queued before us, else None."""
        if self._waiting or len(self._held) + self._handed >= self._limit:
            return None
        slot = Slot(self._epoch)
        self._held.add(slot)
        return slot

    async def acquire(self) -> Slot:
        """Wait for a place; the Slot returned is the token to give back with `release`."""
        slot = self.try_acquire()
        if slot is None:
            self.waits += 1
            await self._queued()
            self._handed -= 1
            slot = Slot(self._epoch)
            self._held.add(slot)
        return slot

    async def _queued(self) -> None:
        """Park at the back of the queue until a place is handed over."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append(future)
        self._waiting += 1
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():  # handed one as it was cancelled
                self._handed -= 1
                self._hand_on()
            else:
                future.cancel()
                self._waiting -= 1
            raise

    def _hand_on(self) -> None:
        """Give the places there is room for to the first waiters in the queue."""
        queue = self._queue
        while queue and len(self._held) + self._handed < self._limit:
            future = queue.popleft()
            if not future.done():  # a cancelled waiter's is skipped: it counted itself out
                future.set_result(None)
                self._waiting -= 1
                self._handed += 1

    def release(self, slot: Slot) -> None:
        self._held.remove(slot)  # KeyError for a place given back twice
        if self._waiting:
            self._hand_on()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        slot = await self.acquire()
        try:
            yield slot
        finally:
            self.release(slot)

    def throttled(self, slot: Slot) -> None:
        """The relay throttled a request sent under `slot`: shrink, once per epoch."""
        if slot.epoch == self._epoch:
            self._limit = max(1, math.floor(self._limit * self.decrease_factor))
            self._epoch += 1
            self._successes = 0

    def succeeded(self) -> None:
        self._successes += 1
        if self._successes >= self.increase_after and self._limit < self.maximum:
            self._limit += 1
            self._successes = 0
            if self._waiting:
                self._hand_on()


@attrs.define
class RateLimit:
    """Requests start at most `rpm` times a minute, evenly spaced (a token bucket of one)."""

    rpm: float
    clock: Clock
    waits: int = 0
    """Starts that had to wait for the rate."""
    _next: float = -math.inf

    def __attrs_post_init__(self) -> None:
        if not self.rpm > 0:
            raise ConfigurationError(f"rpm must be above 0, not {self.rpm}")

    def reserve(self, within: float | None = None) -> float | None:
        """Reserve the next start; the seconds to wait for it, or None (nothing reserved) when
        that is more than `within`."""
        now = self.clock.monotonic()
        start = max(now, self._next)
        if within is not None and start - now > within:
            return None
        self._next = start + 60.0 / self.rpm
        return start - now

    async def wait(self) -> None:
        wait = self.reserve()
        if wait:
            self.waits += 1
            await self.clock.sleep(wait)


@attrs.define(eq=False)
class Place:
    """A request's place: a slot in this process's limit, and a lease of the shared limiter."""

    slot: Slot
    shared: SharedLease | None = None


@attrs.define
class Shared:
    """A shared limiter (`LocalLimiter`, `RedisLimiter`) and the endpoint's key in it."""

    limiter: SharedLimiter
    key: str


@attrs.define
class Pool:
    """The pool of one endpoint: a place under the adaptive limit (this process's), then a
    lease under the shared limiter if there is one (every process's `max_concurrency`), then a
    start under the rate (the shared limiter's, else this process's `rpm`).

    `acquire(patience)` waits at most `patience` seconds on `clock` for all three, then raises
    PoolTimeoutError having taken nothing; 0 fails at once when the pool is full. A shared
    limiter is given at least `MIN_SHARED_WAIT` (a Redis round trip).
    """

    limit: AdaptiveLimit
    rate: RateLimit | None = None
    shared: Shared | None = None
    clock: Clock = attrs.field(factory=SystemClock, kw_only=True)
    timeout: float | None = attrs.field(default=None, kw_only=True)
    """The client's `pool_timeout`: how long a call waits for a place unless it says."""
    rpm: float | None = attrs.field(default=None, kw_only=True)
    """The shared limiter's rate (with a shared limiter, `rate` is None)."""

    async def acquire(self, patience: float | None = None) -> Place:
        """A place, within `patience` seconds (None: as long as it takes)."""
        slot = self.limit.try_acquire()
        if slot is not None and self.shared is None and self.rate is None:
            return Place(slot)  # the fast path: no await, no clock
        asked = self.clock.monotonic()
        if slot is None:
            if patience is not None and patience <= 0:
                raise self._timed_out(patience)
            slot = await self._within(patience, patience, self.limit.acquire)
        place = Place(slot)
        try:
            left = None if patience is None else patience - (self.clock.monotonic() - asked)
            if self.shared is not None:
                place = Place(slot, await self._lease(left, patience))
            elif self.rate is not None:
                await self._start(self.rate, left, patience)
        except BaseException:
            await self.release(place)
            raise
        return place

    async def _start(self, rate: RateLimit, left: float | None, patience: float | None) -> None:
        wait = rate.reserve(left)
        if wait is None:
            raise self._timed_out(patience)
        if wait:
            rate.waits += 1
            await self.clock.sleep(wait)

    async def _lease(self, left: float | None, patience: float | None) -> SharedLease:
        """A lease of the shared limiter and its start, within `left` seconds (or forever)."""
        assert self.shared is not None
        limiter, key, rpm = self.shared.limiter, self.shared.key, self.rpm
        if left is not None:
            left = max(left, MIN_SHARED_WAIT)
        started = self.clock.monotonic()
        lease = await self._within(left, patience, lambda: limiter.acquire(key, self.limit.maximum))
        try:
            if rpm is not None:
                if left is not None:
                    left = max(left - (self.clock.monotonic() - started), MIN_SHARED_WAIT)
                await self._within(left, patience, lambda: limiter.start(key, rpm))
        except BaseException:
            await limiter.release(lease)
            raise
        return lease

    async def _within(
        self, seconds: float | None, patience: float | None, wait: Callable[[], Awaitable[T]]
    ) -> T:
        """What `wait()` gives; PoolTimeoutError once `seconds` have passed on the clock (the
        wait is then cancelled, which never leaks a place)."""
        if seconds is None:
            return await wait()
        got: list[T] = []
        failure: Exception | None = None

        async with anyio.create_task_group() as group:

            async def timer() -> None:
                await self.clock.sleep(seconds)
                group.cancel_scope.cancel()

            group.start_soon(timer)
            try:
                got.append(await wait())
            except Exception as error:  # noqa: BLE001 - raised as itself, not in a group
                failure = error
            group.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if not got:
            raise self._timed_out(patience)
        return got[0]

    def _timed_out(self, patience: float | None) -> PoolTimeoutError:
        limit = self.limit
        return PoolTimeoutError(
            f"no place in the pool within {patience or 0:g} s ({limit.in_flight} in flight of "
            f"{limit.limit} allowed, max_concurrency={limit.maximum}, {limit.waiting} waiting"
            f"{', shared with other processes' if self.shared else ''}); nothing was sent"
        )

    async def release(self, place: Place) -> None:
        """Give the place back: the shared lease (leak-free even if cancelled meanwhile, as
        every SharedLimiter's release is), and this process's slot whatever happens."""
        try:
            if place.shared is not None and self.shared is not None:
                await self.shared.limiter.release(place.shared)
        finally:
            self.limit.release(place.slot)
