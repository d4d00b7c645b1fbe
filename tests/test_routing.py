"""Where requests go and under which limits (`_routing`): a client's pool behind a shared limiter
(`Client(limiter=...)`), in-process and through a real redis-server, against the fake relay.
"""

import logging
import uuid

import anyio
import pytest

import gemimg_async as gi
from gemimg_async import Client, ConfigurationError, LocalLimiter, RedisLimiter
from gemimg_async._limiter import endpoint_key
from gemimg_async.testing import FakeClock, FakeRelay
from helpers import API_KEY, free_port, wait_for

pytestmark = pytest.mark.anyio


def key_of(relay: FakeRelay) -> str:
    """The limiter key of the fake relay with the tests' key, as a client computes it."""
    return endpoint_key(relay.url, API_KEY)


@pytest.fixture
async def slow(relay):
    """The session's relay, taking 0.3 s per generation for this test."""
    relay.latency = 0.3
    yield relay
    relay.latency = 0.0


@pytest.fixture
async def redis_limiters(redis_server):
    """Make RedisLimiters of the session's server under a prefix of the test's own."""
    made: list[RedisLimiter] = []
    prefix = f"t{uuid.uuid4().hex[:10]}"

    def make(url: str | None = None, **options) -> RedisLimiter:
        made.append(RedisLimiter(url or redis_server.url, prefix=prefix, **options))
        return made[-1]

    yield make
    for limiter in made:
        await limiter.aclose()


async def run_together(clients, count: int) -> None:
    async with anyio.create_task_group() as group:
        for i in range(count):
            group.start_soon(clients[i % len(clients)].generate, f"a fox {i}")


# --- one limiter shared by clients ------------------------------------------------------------


async def test_clients_sharing_a_local_limiter_share_max_concurrency(slow):
    """Three clients of max_concurrency=2 behind one LocalLimiter: the relay never sees more
    than 2 in flight in all, and every call gets its image."""
    limiter = LocalLimiter()
    clients = [
        Client(API_KEY, slow.url, max_concurrency=2, limiter=limiter, clock=FakeClock())
        for _ in range(3)
    ]
    try:
        await run_together(clients, 12)
    finally:
        for client in clients:
            await client.aclose()
    assert slow.max_in_flight == 2
    assert slow.generation_count == 12
    assert limiter.held(key_of(slow)) == 0


async def test_the_shared_rpm_paces_every_client_on_the_limiters_clock(relay):
    """rpm=60 with a shared limiter: the limiter reserves the starts of all clients together,
    one a second (its clock's waits), and the clients' own pools keep no rate of their own."""
    clock = FakeClock()
    limiter = LocalLimiter(clock)
    clients = [Client(API_KEY, relay.url, rpm=60, limiter=limiter, clock=clock) for _ in range(2)]
    for i in range(4):
        await clients[i % 2].generate("a fox")
    for client in clients:
        await client.aclose()
    assert clock.sleeps == [pytest.approx(1.0)] * 3
    assert [client.stats.rate_waits for client in clients] == [0, 0]


async def test_a_cancelled_call_gives_its_shared_place_back(slow):
    """A call cancelled while the relay generates frees its place in the shared limiter, so
    another client takes it at once."""
    limiter = LocalLimiter()
    async with (
        Client(API_KEY, slow.url, max_concurrency=1, limiter=limiter) as first,
        Client(API_KEY, slow.url, max_concurrency=1, limiter=limiter) as second,
    ):
        async with anyio.create_task_group() as group:
            group.start_soon(first.generate, "cancelled")
            await wait_for(lambda: slow.in_flight == 1)
            assert limiter.held(key_of(slow)) == 1
            group.cancel_scope.cancel()
        assert limiter.held(key_of(slow)) == 0
        assert first.stats.in_flight == 0
        result = await second.generate("next", pool_timeout=5)
    assert result.images


async def test_pool_timeout_bounds_the_wait_for_a_shared_place(slow):
    """A client whose own pool has room but whose shared place is taken by another client
    raises PoolTimeoutError after pool_timeout, holding nothing, having sent nothing."""
    limiter = LocalLimiter()
    clock = FakeClock()
    async with (
        Client(API_KEY, slow.url, max_concurrency=1, limiter=limiter) as holder,
        Client(API_KEY, slow.url, max_concurrency=1, limiter=limiter, clock=clock) as late,
        anyio.create_task_group() as group,
    ):
        group.start_soon(holder.generate, "first")
        await wait_for(lambda: slow.in_flight == 1)
        with pytest.raises(gi.PoolTimeoutError, match="shared with other processes"):
            await late.generate("second", pool_timeout=2)
        assert late.stats.in_flight == 0
        assert clock.sleeps == [2]
    assert [r.prompt for r in slow.requests] == ["first"]


def test_a_limiter_must_be_one(relay):
    """limiter= takes a SharedLimiter; anything else is refused before anything is sent."""
    with pytest.raises(ConfigurationError, match="limiter= takes"):
        Client(API_KEY, relay.url, limiter="redis://127.0.0.1:6379")


# --- through Redis ------------------------------------------------------------------------------


async def test_clients_sharing_redis_share_max_concurrency(slow, redis_limiters):
    """Two clients, each with a RedisLimiter of its own on one Redis (as two processes would
    have): together they never have more than max_concurrency in flight."""
    limiters = [redis_limiters(), redis_limiters()]
    clients = [
        Client(API_KEY, slow.url, max_concurrency=2, limiter=limiter) for limiter in limiters
    ]
    try:
        await run_together(clients, 8)
    finally:
        for client in clients:
            await client.aclose()
    assert slow.max_in_flight == 2
    assert slow.generation_count == 8
    assert [limiter.held(key_of(slow)) for limiter in limiters] == [0, 0]


async def test_a_cancelled_call_frees_its_redis_lease(slow, redis_limiters, redis_server):
    """Cancelling a call in flight gives its Redis lease back (not left to expire): another
    limiter of the same Redis gets the one place at once."""
    first, second = redis_limiters(), redis_limiters()
    async with (
        Client(API_KEY, slow.url, max_concurrency=1, limiter=first) as one,
        Client(API_KEY, slow.url, max_concurrency=1, limiter=second) as other,
    ):
        async with anyio.create_task_group() as group:
            group.start_soon(one.generate, "cancelled")
            await wait_for(lambda: slow.in_flight == 1)
            group.cancel_scope.cancel()
        assert first.held(key_of(slow)) == 0
        with anyio.fail_after(first.lease_ttl / 2):  # well before the lease would expire
            result = await other.generate("next")
    assert result.images


async def test_redis_down_with_fail_raises_limiter_unavailable_unsent(relay, redis_limiters):
    """on_unreachable="fail": a call raises LimiterUnavailableError (503 for a web backend)
    and nothing reaches the relay."""
    limiter = redis_limiters(f"redis://127.0.0.1:{free_port()}/0", on_unreachable="fail")
    async with Client(API_KEY, relay.url, limiter=limiter) as client:
        with pytest.raises(gi.LimiterUnavailableError, match="nothing was sent") as info:
            await client.generate("a fox")
        assert client.stats.in_flight == 0
    assert gi.error_response(info.value).status == 503
    assert relay.generation_count == 0


async def test_redis_down_by_default_falls_back_to_a_local_share(relay, redis_limiters, caplog):
    """The default (on_unreachable="local"): calls go on under a local share of the limits,
    with one warning for the outage."""
    limiter = redis_limiters(f"redis://127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.WARNING, logger="gemimg_async"):
        async with Client(API_KEY, relay.url, limiter=limiter) as client:
            for _ in range(3):
                assert (await client.generate("a fox")).images
    warnings = [r for r in caplog.records if "cannot reach Redis" in r.getMessage()]
    assert len(warnings) == 1
    assert relay.generation_count == 3
