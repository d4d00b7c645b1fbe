"""A request's place in the client's pool: held while it is sent, given back while it waits."""

from __future__ import annotations

from typing import Self

import attrs

from ._clock import Clock
from ._limits import Pool, Slot

__all__ = ["Lease"]


@attrs.define
class Lease:
    """A request's place in the pool: held while it is sent, given back while it waits."""

    _pool: Pool = attrs.field(alias="pool")
    slot: Slot | None = None

    async def acquire(self) -> None:
        self.slot = await self._pool.acquire()

    def release(self) -> None:
        if self.slot is not None:
            self._pool.release(self.slot)
            self.slot = None

    def throttled(self) -> None:
        """The relay throttled the request sent under this place: shrink the limit."""
        if self.slot is not None:
            self._pool.limit.throttled(self.slot)

    async def wait(self, seconds: float, clock: Clock) -> None:
        """Wait without the place, then queue again under the limit and rate of then."""
        self.release()
        await clock.sleep(seconds)
        await self.acquire()

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
