"""A client's machinery built from its arguments: one relay, or several endpoints, each with
its pool; and what `client.stats` reads back from it."""

from __future__ import annotations

import contextlib
import importlib
import os
import ssl as _ssl
from collections.abc import Sequence

import aiohttp

from ._clock import Clock, SystemClock
from ._config import RetryPolicy, Timeouts
from ._dialects import Dialect, SizeStyle, dialect_for
from ._dialects import base_url as relay_base
from ._events import Listener
from ._exceptions import ConfigurationError
from ._generation import Engine
from ._imagehost import ImageHost
from ._limiter import SharedLimiter
from ._network import Network
from ._pacing import Pacer
from ._prices import Prices
from ._retry import RetryBudget
from ._routing import Breaker, Endpoint, Route, Router, Via, checked_key, checked_url, make_pool
from ._save import Saver
from ._stats import ClientStats
from ._transport import Relay

__all__ = ["build_engine", "relays_of", "stats_of"]


def _load_lazy_modules() -> None:
    """anyio imports its asyncio backend (some 30 modules: 50 to 100 ms of the loop on these
    machines) at its first call, which the hot path no longer makes, and asyncio its thread
    pool at its first thread hop: they would come in the middle of traffic (a batch's first
    write, a chat answer's inline image) or as the client closes. Loaded with the client
    instead (once per process), while nothing is in flight."""
    importlib.import_module("concurrent.futures.thread")
    with contextlib.suppress(ImportError):  # a private path: anyio may move it
        importlib.import_module("anyio._backends._asyncio")


def build_engine(
    *,
    api_key: str | None,
    base_url: str | None,
    endpoints: Sequence[Endpoint] | None,
    max_concurrency: int,
    rpm: float | None,
    timeouts: Timeouts,
    retry: RetryPolicy,
    max_image_bytes: int,
    allow_insecure_http: bool,
    dialect: str | Dialect,
    size_style: SizeStyle | None,
    on_event: Listener | None,
    clock: Clock | None,
    proxy: str | None,
    trust_env: bool,
    ssl: _ssl.SSLContext | str | os.PathLike[str] | None,
    session: aiohttp.ClientSession | None,
    prices: Prices,
    metadata: bool,
    pool_timeout: float | None,
    limiter: SharedLimiter | None,
) -> Engine:
    """The engine of a `Client` made with these arguments (see `Client`)."""
    if not isinstance(prices, Prices):
        raise ConfigurationError(
            f"prices= takes a gi.Prices (Prices.from_file reads a table), not {prices!r:.40}"
        )
    if endpoints is not None:
        endpoints = _checked_endpoints(endpoints, api_key, base_url)
    else:
        api_key = checked_key(api_key)  # said first, as before
        endpoints = [Endpoint(checked_url(base_url), api_key, dialect=dialect)]
    network = Network.configure(
        proxy=proxy,
        trust_env=trust_env,
        ssl=ssl,
        session=session,
        allow_insecure_http=allow_insecure_http,
    )
    _load_lazy_modules()
    clock = clock or SystemClock()
    pacer = Pacer()
    routes = []
    for endpoint in endpoints:
        base = relay_base(endpoint.base_url, allow_insecure_http=allow_insecure_http)
        network.check_relay(base)
        speaks = dialect_for(endpoint.dialect or dialect, size_style)
        relay = Relay(speaks.auth_headers(endpoint.api_key), timeouts, clock, pacer, network)
        pool = make_pool(
            max_concurrency=endpoint.max_concurrency or max_concurrency,
            rpm=endpoint.rpm or rpm,
            clock=clock,
            pool_timeout=pool_timeout,
            limiter=limiter,
            base_url=str(base),
            api_key=endpoint.api_key,
        )
        name = endpoint.label if len(endpoints) > 1 else None
        routes.append(Route(Via(relay, base, speaks, name), pool, Breaker(clock), endpoint.weight))
    first = routes[0]
    return Engine(
        relay=first.via.relay,
        base=first.via.base,
        dialect=first.via.dialect,
        pool=Router(routes) if len(routes) > 1 else first.pool,
        retry=retry,
        budget=RetryBudget(retry.budget_tokens, retry.budget_ratio),
        saver=Saver(max_image_bytes, retry, timeouts, clock, ImageHost(pacer, network), metadata),
        clock=clock,
        on_event=on_event,
        prices=prices,
    )


def _checked_endpoints(
    endpoints: Sequence[Endpoint], api_key: str | None, base_url: str | None
) -> list[Endpoint]:
    if api_key is not None or base_url is not None:
        raise ConfigurationError(
            "give either api_key and base_url, or endpoints=[gi.Endpoint(...), ...]: not both"
        )
    endpoints = list(endpoints)
    if not endpoints or not all(isinstance(e, Endpoint) for e in endpoints):
        raise ConfigurationError("endpoints= takes a list of one or more gi.Endpoint values")
    names = [e.label for e in endpoints]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigurationError(
            f"two endpoints are named {twice[0]!r}: give each its own name= (stats, results "
            "and manifests tell them apart by it)"
        )
    return endpoints


def relays_of(engine: Engine) -> list[Relay]:
    pool = engine.pool
    return [r.via.relay for r in pool.routes] if isinstance(pool, Router) else [engine.relay]


def stats_of(engine: Engine) -> ClientStats:
    """The pool's figures; with several endpoints, their sums and each one's own."""
    pool = engine.pool
    pools = [r.pool for r in pool.routes] if isinstance(pool, Router) else [pool]
    return ClientStats(
        max_concurrency=sum(p.limit.maximum for p in pools),
        limit=sum(p.limit.limit for p in pools),
        in_flight=sum(p.limit.in_flight for p in pools),
        waiting=sum(p.limit.waiting for p in pools),
        pool_waits=sum(p.limit.waits for p in pools),
        rate_waits=sum(p.rate.waits for p in pools if p.rate),
        retry_tokens=engine.budget.tokens,
        endpoints=pool.stats() if isinstance(pool, Router) else (),
    )
