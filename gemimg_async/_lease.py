"""A request's place in the client's pool: held while it is sent, given back while it waits."""

from __future__ import annotations

from typing import Self

import attrs

from ._clock import Clock
from ._config import USE_CLIENT_DEFAULT, UseClientDefault
from ._limits import Place, Pool, check_pool_timeout

__all__ = ["Lease", "Patience"]

Patience = float | UseClientDefault | None
"""A call's `pool_timeout`: seconds, None (no limit), or the client's."""


@attrs.define
class Lease:
    """A request's place in the pool: held while it is sent, given back while it waits."""

    _pool: Pool = attrs.field(alias="pool")
    patience: Patience = USE_CLIENT_DEFAULT
    """How long the first acquisition may wait (`pool_timeout`, the pool's own unless given);
    once a request may have been sent, waiting again after a retry's pause is never cut short."""
    place: Place | None = None

    async def acquire(self) -> None:
        patience, self.patience = self.patience, None
        if isinstance(patience, UseClientDefault):
            patience = self._pool.timeout
        self.place = await self._pool.acquire(check_pool_timeout(patience))

    async def release(self) -> None:
        """Give the place back; a second call does nothing."""
        place, self.place = self.place, None
        if place is not None:
            await self._pool.release(place)

    def throttled(self) -> None:
        """The relay throttled the request sent under this place: shrink the limit."""
        if self.place is not None:
            self._pool.limit.throttled(self.place.slot)

    async def wait(self, seconds: float, clock: Clock) -> None:
        """Wait without the place, then queue again under the limit and rate of then."""
        await self.release()
        await clock.sleep(seconds)
        await self.acquire()

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()
