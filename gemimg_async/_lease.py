"""A request's place in the client's pool: held while it is sent, given back while it waits.

With several endpoints (a `Router`), the place is at one of them (`route`): a request that
failed without doing any work there moves to another healthy one for its next attempt; one
whose outcome is unknown stays where it was.
"""

from __future__ import annotations

from typing import Self, cast

import attrs

from ._clock import Clock
from ._config import USE_CLIENT_DEFAULT, UseClientDefault
from ._limits import Place, Pool, check_pool_timeout
from ._retry import Failure
from ._routing import MOVES, Route, Router, Via

__all__ = ["Lease", "Patience", "width_of"]

Patience = float | UseClientDefault | None
"""A call's `pool_timeout`: seconds, None (no limit), or the client's."""


def width_of(pool: Pool | Router) -> int:
    """How many requests may be in flight at once through `pool`, at most."""
    return pool.maximum if isinstance(pool, Router) else pool.limit.maximum


@attrs.define
class Lease:
    """A request's place in the pool: held while it is sent, given back while it waits."""

    _pool: Pool | Router = attrs.field(alias="pool")
    patience: Patience = USE_CLIENT_DEFAULT
    """How long the first acquisition may wait (`pool_timeout`, the pool's own unless given);
    once a request may have been sent, waiting again after a retry's pause is never cut short."""
    place: Place | None = None
    route: Route | None = None
    """The endpoint the place is at (with several)."""
    _last: Failure | None = None
    _tried: list[Route] | None = None
    """The endpoints this request failed at without doing work: it moves to each once."""
    _moving: bool = False

    async def acquire(self) -> None:
        patience, self.patience = self.patience, None
        pool = self._pool
        if patience is USE_CLIENT_DEFAULT:
            patience = (pool.routes[0].pool if isinstance(pool, Router) else pool).timeout
        elif patience is not None:
            patience = check_pool_timeout(patience)
        if isinstance(pool, Router):
            was, moves = self.route, self._last in MOVES
            stay = was if was is not None and not moves else None
            avoid = self._tried or ()
            self.route, self.place = await pool.acquire(patience, avoid=avoid, stay=stay)
        else:
            self.place = await pool.acquire(patience)

    def via(self, default: Via) -> Via:
        """Where the attempt under this place goes."""
        return self.route.via if self.route is not None else default

    async def release(self) -> None:
        """Give the place back; a second call does nothing. (A probe of an endpoint that ended
        neither way, cancelled, lets another probe go.)"""
        place, self.place = self.place, None
        route = self.route
        if route is not None:
            route.breaker.gave_up()
        if place is not None:
            pool = route.pool if route is not None else cast("Pool", self._pool)
            if place.shared is None:
                pool.limit.release(place.slot)  # no await: nothing shared to give back
            else:
                await pool.release(place)

    def _pool_of(self) -> Pool:
        assert isinstance(self._pool, Pool)
        return self._pool

    def can_move(self, kind: Failure) -> bool:
        """Whether, after a failure of `kind` here, the request may go to another endpoint now
        (one it has not failed at): then it goes at once, without a retry's pause or budget."""
        pool, route = self._pool, self.route
        self._moving = (
            kind in MOVES
            and route is not None
            and isinstance(pool, Router)
            and pool.can_move([*(self._tried or ()), route])
        )
        return self._moving

    def failed(self, kind: Failure) -> None:
        """The attempt under this place failed so: shrink the limit if throttled; with several
        endpoints, count it against this one."""
        self._last = kind
        if self.place is None:
            return
        if self.route is not None and kind in MOVES:
            self._tried = [*(self._tried or ()), self.route]
        if self.route is not None and isinstance(self._pool, Router):
            self._pool.failed(self.route, self.place, kind)
        elif kind is Failure.THROTTLED:
            self._pool_of().limit.throttled(self.place.slot)

    def succeeded(self) -> None:
        if self.route is not None and isinstance(self._pool, Router):
            self._pool.succeeded(self.route)
        else:
            self._pool_of().limit.succeeded()

    async def wait(self, seconds: float, clock: Clock) -> None:
        """Wait without the place, then queue again under the limit and rate of then (at once,
        when moving to another endpoint: the pause was for this one)."""
        await self.release()
        if not self._moving:
            await clock.sleep(seconds)
        await self.acquire()

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()
