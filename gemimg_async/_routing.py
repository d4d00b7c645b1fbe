"""Where a client's requests go, and under which limits.

One relay is the plain `Client(api_key, base_url)`; `Client(endpoints=[Endpoint(...), ...])` spreads
requests over several, weighted, each with its own pool and a circuit breaker::

    closed --(BREAKER_FAILURES in a row: not sent, throttled, 5xx)--> open
    open --(BREAKER_COOLDOWN later, on the client's clock)--> half-open: one probe request
    half-open --(the probe succeeds)--> closed;  --(it fails)--> open again

A request moves to another endpoint only when it certainly did no work where it was (not sent,
throttled, a 5xx): an outcome-unknown request stays where it was (another relay cannot honour the
first one's Idempotency-Key, and a paid image may exist there).
"""

from __future__ import annotations

import enum
import math
import os
import random
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs
import yarl

from ._clock import Clock
from ._dialects import Dialect
from ._exceptions import ConfigurationError
from ._limiter import SharedLimiter, check_limits, endpoint_key
from ._limits import AdaptiveLimit, Place, Pool, RateLimit, Shared, check_pool_timeout
from ._retry import Failure
from ._secrets import Secret
from ._stats import EndpointStats
from ._transport import Relay

__all__ = [
    "BREAKER_COOLDOWN",
    "BREAKER_FAILURES",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "MOVES",
    "Breaker",
    "Endpoint",
    "Route",
    "Router",
    "State",
    "Via",
    "checked_key",
    "checked_url",
    "make_pool",
]

BREAKER_FAILURES = 3
"""Failures in a row (not sent, throttled, 5xx) after which an endpoint is taken out."""
BREAKER_COOLDOWN = 30.0
"""Seconds an endpoint stays out before one probe request may try it again."""
MOVES = frozenset({Failure.NOT_SENT, Failure.THROTTLED, Failure.SERVER})
"""The failures after which a request may go to another endpoint (nothing was done where it was)."""

ENV_API_KEY = "GEMIMG_API_KEY"
ENV_BASE_URL = "GEMIMG_BASE_URL"


def checked_key(api_key: str | None, what: str = f"pass api_key= or set {ENV_API_KEY}") -> str:
    """The API key given, or GEMIMG_API_KEY's; ConfigurationError for none or a mangled one."""
    api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
    if not api_key:
        raise ConfigurationError(f"no API key: {what}")
    if api_key != api_key.strip() or any(c in api_key for c in "\r\n\t "):
        raise ConfigurationError("the API key contains whitespace: check how it was pasted")
    return api_key


def checked_url(base_url: str | None) -> str:
    """The relay's URL given, or GEMIMG_BASE_URL's."""
    base_url = base_url if base_url is not None else os.environ.get(ENV_BASE_URL)
    if not base_url:
        raise ConfigurationError(
            f"no relay: pass base_url= (such as 'https://api.example.com') or set {ENV_BASE_URL}"
        )
    return base_url


def make_pool(
    *,
    max_concurrency: int,
    rpm: float | None,
    clock: Clock,
    pool_timeout: float | None,
    limiter: SharedLimiter | None,
    base_url: str,
    api_key: str,
) -> Pool:
    """An endpoint's pool: its in-flight limit, and its rate in this process or, with a
    `limiter`, shared with every process using the same endpoint (its key names it)."""
    limit = AdaptiveLimit(max_concurrency)
    timeout = check_pool_timeout(pool_timeout)
    if limiter is None:
        rate = RateLimit(rpm, clock) if rpm is not None else None
        return Pool(limit, rate, clock=clock, timeout=timeout)
    if not isinstance(limiter, SharedLimiter):
        raise ConfigurationError(
            f"limiter= takes a gi.LocalLimiter or gi.RedisLimiter, not {limiter!r:.60}"
        )
    check_limits(rpm=rpm)
    shared = Shared(limiter, endpoint_key(base_url, api_key))
    return Pool(limit, shared=shared, clock=clock, timeout=timeout, rpm=rpm)


def _secret(value: object) -> Secret:
    if not isinstance(value, str):
        raise ConfigurationError("an Endpoint's api_key is a string")
    return Secret(checked_key(value, "an Endpoint needs its api_key"))


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigurationError(f"an Endpoint's {attribute.name} must be above 0, not {value!r}")


@attrs.frozen
class Endpoint:
    """One relay and key among a client's `endpoints`: its `weight` (share of the traffic),
    its own `max_concurrency`, `rpm` and `dialect` (the client's when None), and a `name`
    for stats, results and manifests (the URL's host and port unless given). The key's repr is
    hidden."""

    base_url: str
    api_key: Secret = attrs.field(converter=_secret)
    name: str | None = None
    dialect: str | Dialect | None = None
    """The client's `dialect` when None."""
    weight: float = attrs.field(default=1.0, validator=_positive)
    max_concurrency: int | None = None
    rpm: float | None = None

    def __attrs_post_init__(self) -> None:
        check_limits(max_concurrency=self.max_concurrency, rpm=self.rpm)

    @property
    def label(self) -> str:
        """Its name, or its URL's host and port."""
        if self.name:
            return self.name
        url = yarl.URL(self.base_url)
        return f"{url.host}:{url.port}" if url.host else self.base_url

    @classmethod
    def from_table(cls, table: Mapping[str, Any], environ: Mapping[str, str]) -> Endpoint:
        """One `[[endpoints]]` table of an endpoints file; the key read from the variable its
        `api_key_env` names (a key is never written in the file)."""
        if "api_key" in table:
            raise ConfigurationError(
                'an endpoint names the variable holding its key (api_key_env = "RELAY_A_KEY"), '
                "never the key itself"
            )
        known = {"base_url", "api_key_env", "name", "dialect", "weight", "max_concurrency", "rpm"}
        if unknown := sorted(set(table) - known):
            raise ConfigurationError(f"unknown endpoint field(s) {', '.join(unknown)}")
        if "api_key_env" not in table or "base_url" not in table:
            raise ConfigurationError("each endpoint needs base_url and api_key_env")
        variable = table["api_key_env"]
        key = environ.get(variable)
        if not key:
            name = table.get("name") or table["base_url"]
            raise ConfigurationError(f"endpoint {name}: the variable {variable} is not set")
        fields = {k: v for k, v in table.items() if k != "api_key_env"}
        return cls(api_key=key, **fields)


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@attrs.define
class Breaker:
    """An endpoint's circuit breaker, on the client's clock (see the module's docstring)."""

    clock: Clock
    failures_to_open: int = BREAKER_FAILURES
    cooldown: float = BREAKER_COOLDOWN
    state: State = State.CLOSED
    failures: int = 0
    """Failures in a row."""
    until: float | None = None
    """While open: the monotonic time a probe may go."""
    _probing: bool = False

    def available(self) -> bool:
        """Whether a request may go now (in half-open, only the one probe)."""
        if self.state is State.OPEN and self.until is not None:
            if self.clock.monotonic() < self.until:
                return False
            self.state, self._probing = State.HALF_OPEN, False
        return not (self.state is State.HALF_OPEN and self._probing)

    def took(self) -> None:
        """A request was routed here (in half-open: the probe)."""
        if self.state is State.HALF_OPEN:
            self._probing = True

    def succeeded(self) -> None:
        self.state, self.failures, self.until, self._probing = State.CLOSED, 0, None, False

    def failed(self) -> None:
        self.failures += 1
        if self.state is State.HALF_OPEN or self.failures >= self.failures_to_open:
            self.state, self._probing = State.OPEN, False
            self.until = self.clock.monotonic() + self.cooldown

    def gave_up(self) -> None:
        """The request routed here ended some other way: a probe may go again."""
        self._probing = False


@attrs.frozen(eq=False)
class Via:
    """Where an attempt goes: the relay session, its base URL and dialect, and its name."""

    relay: Relay
    base: yarl.URL
    dialect: Dialect
    name: str | None = None


@attrs.define(eq=False)
class Route:
    """One endpoint of a client: where to send, its pool, its breaker and its counts."""

    via: Via
    pool: Pool
    breaker: Breaker
    weight: float = 1.0
    successes: int = 0
    failures: int = 0

    def stats(self) -> EndpointStats:
        limit, breaker = self.pool.limit, self.breaker
        breaker.available()  # an open breaker whose cool-down is over reads half-open
        return EndpointStats(
            name=self.via.name or "",
            max_concurrency=limit.maximum,
            limit=limit.limit,
            in_flight=limit.in_flight,
            waiting=limit.waiting,
            state=breaker.state.value,
            cooling_until=breaker.until if breaker.state is State.OPEN else None,
            successes=self.successes,
            failures=self.failures,
        )


@attrs.define
class Router:
    """The pools of several endpoints behind one `acquire`: a healthy endpoint with room,
    weighted; if none has room, the wait is at one chosen by weight among the healthy ones."""

    routes: Sequence[Route]
    rng: random.Random = attrs.Factory(random.Random)

    @property
    def maximum(self) -> int:
        return sum(route.pool.limit.maximum for route in self.routes)

    def _healthy(self, avoid: Collection[Route]) -> list[Route]:
        healthy = [r for r in self.routes if r not in avoid and r.breaker.available()]
        if healthy:
            return healthy
        if tried := [r for r in self.routes if r.breaker.available()]:
            return tried
        # every endpoint is out: the one whose cool-down ends first is tried (a probe)
        return [min(self.routes, key=lambda r: r.breaker.until or 0.0)]

    def _order(self, routes: list[Route]) -> list[Route]:
        """`routes` in a weighted random order (each next one drawn by weight)."""
        keyed = [(self.rng.random() ** (1.0 / r.weight), i) for i, r in enumerate(routes)]
        return [routes[i] for _, i in sorted(keyed, reverse=True)]

    async def acquire(
        self, patience: float | None, *, avoid: Collection[Route] = (), stay: Route | None = None
    ) -> tuple[Route, Place]:
        """A place at `stay` if given (an outcome-unknown request never moves), else at a
        healthy endpoint not in `avoid` if there is one."""
        if stay is not None:
            return stay, await stay.pool.acquire(patience)
        ordered = self._order(self._healthy(avoid))
        chosen = next((r for r in ordered if r.pool.limit.room), ordered[0])
        place = await chosen.pool.acquire(patience)
        chosen.breaker.took()
        return chosen, place

    def can_move(self, avoid: Collection[Route]) -> bool:
        """Whether an endpoint not in `avoid` is healthy now."""
        return any(r not in avoid and r.breaker.available() for r in self.routes)

    def succeeded(self, route: Route) -> None:
        route.pool.limit.succeeded()
        route.breaker.succeeded()
        route.successes += 1

    def failed(self, route: Route, place: Place, kind: Failure) -> None:
        route.failures += 1
        if kind is Failure.THROTTLED:
            route.pool.limit.throttled(place.slot)
        if kind in MOVES:
            route.breaker.failed()
        else:
            route.breaker.gave_up()

    def stats(self) -> tuple[EndpointStats, ...]:
        return tuple(route.stats() for route in self.routes)
