"""The client-wide pool: how many generations may be in flight, and how fast they may start."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
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
    new. The limit is a `CapacityLimiter` whose total may drop below what is borrowed: holders
    keep their places and newcomers wait.
    """

    maximum: int
    decrease_factor: float = DEFAULT_DECREASE_FACTOR
    increase_after: int = DEFAULT_INCREASE_AFTER
    waits: int = 0
    """Acquisitions that found the pool full and had to wait."""
    _limiter: anyio.CapacityLimiter = attrs.field(init=False)
    _borrowers: dict[Slot, object] = attrs.Factory(dict)
    _epoch: int = 0
    _successes: int = 0

    def __attrs_post_init__(self) -> None:
        if self.maximum < 1:
            raise ConfigurationError(f"max_concurrency must be at least 1, not {self.maximum}")
        self._limiter = anyio.CapacityLimiter(self.maximum)

    @property
    def limit(self) -> int:
        return int(self._limiter.total_tokens)

    @property
    def in_flight(self) -> int:
        return self._limiter.borrowed_tokens

    @property
    def waiting(self) -> int:
        return self._limiter.statistics().tasks_waiting

    async def acquire(self) -> Slot:
        """Wait for a place; the Slot returned is the token to give back with `release`."""
        if self._limiter.available_tokens < 1 or self.waiting:
            self.waits += 1
        borrower = object()
        await self._limiter.acquire_on_behalf_of(borrower)
        slot = Slot(self._epoch)
        self._borrowers[slot] = borrower
        return slot

    def release(self, slot: Slot) -> None:
        self._limiter.release_on_behalf_of(self._borrowers.pop(slot))

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
            self._limiter.total_tokens = max(1, math.floor(self.limit * self.decrease_factor))
            self._epoch += 1
            self._successes = 0

    def succeeded(self) -> None:
        self._successes += 1
        if self._successes >= self.increase_after and self.limit < self.maximum:
            self._limiter.total_tokens = self.limit + 1
            self._successes = 0


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
        slot = await self.limit.acquire()
        try:
            if self.rate is not None:
                await self.rate.wait()
        except BaseException:
            self.limit.release(slot)
            raise
        return slot

    def release(self, slot: Slot) -> None:
        self.limit.release(slot)
