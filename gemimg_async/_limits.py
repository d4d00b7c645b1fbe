"""The client-wide pool: how many generations may be in flight, and how fast they may start."""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs

from ._clock import Clock
from ._exceptions import ConfigurationError

__all__ = [
    "DEFAULT_DECREASE_FACTOR",
    "DEFAULT_INCREASE_AFTER",
    "AdaptiveLimit",
    "Pool",
    "RateLimit",
    "Slot",
]

DEFAULT_DECREASE_FACTOR = 0.7
"""On 429/503 the in-flight limit is multiplied by this (and kept at least 1)."""
DEFAULT_INCREASE_AFTER = 10
"""Successes in a row after which the in-flight limit grows by one, up to its maximum."""


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

    async def wait(self) -> None:
        now = self.clock.monotonic()
        start = max(now, self._next)
        self._next = start + 60.0 / self.rpm
        if start > now:
            self.waits += 1
            await self.clock.sleep(start - now)


@attrs.define
class Pool:
    """The client-wide pool: a place under the adaptive limit, then a start under the rate."""

    limit: AdaptiveLimit
    rate: RateLimit | None = None

    async def acquire(self) -> Slot:
        slot = self.limit.try_acquire() or await self.limit.acquire()
        try:
            if self.rate is not None:
                await self.rate.wait()
        except BaseException:
            self.limit.release(slot)
            raise
        return slot

    def release(self, slot: Slot) -> None:
        self.limit.release(slot)
