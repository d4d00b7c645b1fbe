"""Where requests go and under which limits (`_routing`): a client's pool behind a shared limiter
(`Client(limiter=...)`), in-process and through a real redis-server, against the fake relay.
"""

import logging
import pickle
import uuid

import anyio
import pytest

import gemimg_async as gi
from gemimg_async import Client, ConfigurationError, Endpoint, LocalLimiter, RedisLimiter
from gemimg_async._limiter import endpoint_key
from gemimg_async.testing import FakeClock, FakeRelay, Fault
from helpers import API_KEY, closed_port_url, free_port, wait_for

pytestmark = pytest.mark.anyio


def key_of(relay: FakeRelay) -> str:
    """The limiter key of the fake relay with the tests' key, as a client computes it."""
    return endpoint_key(relay.url, API_KEY)


@pytest.fixture
async def slow():
    """A relay of the test's own (nothing left over in flight), 0.3 s per generation."""
    async with FakeRelay(api_keys=API_KEY, latency=0.3) as relay:
        yield relay


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


@pytest.mark.parametrize("pool_timeout", [None, 5])
async def test_redis_down_with_fail_raises_limiter_unavailable_unsent(
    relay, redis_limiters, pool_timeout
):
    """on_unreachable="fail": a call raises LimiterUnavailableError (503 for a web backend),
    as itself whether or not a pool_timeout bounds the wait, and nothing reaches the relay."""
    limiter = redis_limiters(f"redis://127.0.0.1:{free_port()}/0", on_unreachable="fail")
    async with Client(API_KEY, relay.url, limiter=limiter, pool_timeout=pool_timeout) as client:
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


# --- endpoints: values --------------------------------------------------------------------------


def test_an_endpoint_hides_its_key_and_pickles():
    """An Endpoint's repr never shows its key; it pickles whole (key included) as a value."""
    endpoint = Endpoint("https://relay-a.example", "sk-very-secret", name="a", weight=2)
    assert "sk-very-secret" not in repr(endpoint)
    again = pickle.loads(pickle.dumps(endpoint))  # noqa: S301 - our own bytes
    assert again == endpoint
    assert again.api_key == "sk-very-secret"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"weight": 0}, "weight must be above 0"),
        ({"max_concurrency": 0}, "max_concurrency must be at least 1"),
        ({"rpm": -1}, "rpm must be above 0"),
    ],
)
def test_an_endpoint_refuses_bad_limits(fields, message):
    """Weights, max_concurrency and rpm of an endpoint are checked when it is made."""
    with pytest.raises(ConfigurationError, match=message):
        Endpoint("https://relay.example", "sk-1", **fields)


def test_an_endpoint_table_reads_its_key_from_the_variable_it_names():
    """[[endpoints]] tables name the variable holding the key; an unset one is a clear error,
    and a key written in the file is refused."""
    table = {"base_url": "https://a.example", "api_key_env": "RELAY_A_KEY", "name": "a"}
    endpoint = Endpoint.from_table(table, {"RELAY_A_KEY": "sk-a"})
    assert (endpoint.api_key, endpoint.name) == ("sk-a", "a")
    with pytest.raises(ConfigurationError, match="endpoint a: the variable RELAY_A_KEY is not"):
        Endpoint.from_table(table, {})
    with pytest.raises(ConfigurationError, match="never the key itself"):
        Endpoint.from_table({**table, "api_key": "sk-in-the-file"}, {"RELAY_A_KEY": "sk-a"})


def test_endpoints_exclude_api_key_and_need_distinct_names(relay):
    """endpoints= goes without api_key/base_url; two endpoints of one name are refused."""
    one = Endpoint(relay.url, API_KEY)
    with pytest.raises(ConfigurationError, match="not both"):
        Client(API_KEY, relay.url, endpoints=[one])
    with pytest.raises(ConfigurationError, match="named"):
        Client(endpoints=[one, Endpoint(relay.url, "sk-other")])


# --- endpoints: routing and failover ------------------------------------------------------------


@pytest.fixture
async def relays():
    """Two fake relays of the test's own, A and B."""
    async with (
        FakeRelay(api_keys=API_KEY) as a,
        FakeRelay(api_keys=API_KEY) as b,
    ):
        yield a, b


def endpoints_client(*endpoints: Endpoint, **options) -> Client:
    return Client(endpoints=list(endpoints), clock=options.pop("clock", FakeClock()), **options)


async def test_traffic_is_spread_by_weight(relays):
    """Two healthy endpoints weighted 3:1 both serve, the heavier one more; each result
    names its endpoint, and stats count each one's successes."""
    a, b = relays
    async with endpoints_client(
        Endpoint(a.url, API_KEY, name="a", weight=3), Endpoint(b.url, API_KEY, name="b")
    ) as client:
        results = [await client.generate(f"a fox {i}") for i in range(60)]
        stats = {s.name: s for s in client.stats.endpoints}
    served = [r.endpoint for r in results]
    assert served.count("a") == a.generation_count > b.generation_count == served.count("b") > 0
    assert (stats["a"].successes, stats["b"].successes) == (served.count("a"), served.count("b"))
    assert {s.state for s in stats.values()} == {"closed"}


async def test_an_endpoint_that_is_down_is_taken_out_and_nothing_is_lost(relays):
    """An endpoint whose connections are refused: requests that went there move to the other
    at once (never sent, so never billed), its breaker opens after 3 failures in a row, and
    every call gets its image; the relays saw exactly the attempts reported."""
    a, _ = relays
    clock = FakeClock()
    async with endpoints_client(
        Endpoint(closed_port_url(), API_KEY, name="down", weight=5),
        Endpoint(a.url, API_KEY, name="up"),
        clock=clock,
    ) as client:
        results = [await client.generate(f"a fox {i}") for i in range(10)]
        down, up = client.stats.endpoints
    assert all(r.endpoint == "up" for r in results)
    assert a.generation_count == up.successes == 10
    assert sum(r.attempts for r in results) == 10 + down.failures
    assert down.failures == 3
    assert (down.state, down.down, down.cooling_until) == ("open", True, clock.now + 30)
    assert clock.sleeps == []  # moving on took no pause


async def test_a_throttling_endpoint_sends_its_requests_to_the_other(relays):
    """429s from one endpoint move those requests to the other at once; the throttled
    requests did no work, and the attempts reported equal the requests the relays saw."""
    a, b = relays
    a.script(*[Fault.rate_limited()] * 2)
    async with endpoints_client(
        Endpoint(a.url, API_KEY, name="a", weight=1e6), Endpoint(b.url, API_KEY, name="b")
    ) as client:
        results = [await client.generate(f"a fox {i}") for i in range(4)]
        stats = {s.name: s for s in client.stats.endpoints}
    assert [r.endpoint for r in results[:2]] == ["b", "b"]
    assert [r.attempts for r in results[:2]] == [2, 2]
    assert sum(r.attempts for r in results) == len(a.requests) + len(b.requests)
    assert stats["a"].failures == 2
    assert stats["a"].state == "closed"  # two in a row are not three


async def test_an_outcome_unknown_request_never_moves(relays):
    """A request whose answer was lost after it was sent (it may have made a paid image)
    is not sent to the other endpoint: OutcomeUnknownError naming where it went."""
    a, b = relays
    a.script(Fault.reset(), Fault.reset())
    async with endpoints_client(
        Endpoint(a.url, API_KEY, name="a", weight=1e6),
        Endpoint(b.url, API_KEY, name="b"),
        retry=gi.RetryPolicy(outcome_unknown_attempts=2),
    ) as client:
        with pytest.raises(gi.OutcomeUnknownError) as info:
            await client.generate("a fox")
        assert info.value.endpoint == "a"
        stats = {s.name: s for s in client.stats.endpoints}
    assert len(a.requests) == 2  # retried where it was, with the same Idempotency-Key
    assert len({r.idempotency_key for r in a.requests}) == 1
    assert b.requests == []
    assert stats["a"].state == "closed"  # an unknown outcome says nothing of its health


async def test_traffic_returns_to_an_endpoint_after_its_cool_down(relays):
    """An endpoint taken out by 503s gets one probe once its cool-down has passed on the
    client's clock; the probe succeeds, the breaker closes, and it serves again."""
    a, b = relays
    a.script(*[Fault.server_error(503)] * 3)
    clock = FakeClock()
    async with endpoints_client(
        Endpoint(a.url, API_KEY, name="a", weight=1e6),
        Endpoint(b.url, API_KEY, name="b"),
        clock=clock,
    ) as client:
        first = [await client.generate(f"a fox {i}") for i in range(3)]
        assert client.stats.endpoints[0].state == "open"
        before = await client.generate("while a is out")
        clock.now += 30
        assert client.stats.endpoints[0].state == "half-open"
        after = [await client.generate(f"a cat {i}") for i in range(3)]
        assert client.stats.endpoints[0].state == "closed"
    assert [r.endpoint for r in first] == ["b", "b", "b"]
    assert before.endpoint == "b"
    assert [r.endpoint for r in after] == ["a", "a", "a"]


async def test_three_endpoints_down_throttling_and_slow_lose_nothing():
    """Three endpoints under 30 concurrent calls, one down, one throttling, one slow: every call
    gets its image, no request is sent twice after its outcome became unknown (none did here),
    and the relays saw exactly the attempts the results report."""
    async with (
        FakeRelay(api_keys=API_KEY) as throttling,
        FakeRelay(api_keys=API_KEY, latency=0.2) as slow,
    ):
        throttling.script(*[Fault.rate_limited()] * 4)
        async with endpoints_client(
            Endpoint(closed_port_url(), API_KEY, name="down"),
            Endpoint(throttling.url, API_KEY, name="throttling"),
            Endpoint(slow.url, API_KEY, name="slow"),
            max_concurrency=4,
        ) as client:
            results = []

            async def one(i: int) -> None:
                results.append(await client.generate(f"a fox {i}"))

            async with anyio.create_task_group() as group:
                for i in range(30):
                    group.start_soon(one, i)
            stats = {s.name: s for s in client.stats.endpoints}
        assert len(results) == 30
        assert all(r.images for r in results)
        served = [r.endpoint for r in results]
        assert "down" not in served
        assert served.count("throttling") == throttling.generation_count - 4
        assert served.count("slow") == slow.generation_count
        sent = len(throttling.requests) + len(slow.requests) + stats["down"].failures
        assert sum(r.attempts for r in results) == sent
        assert stats["down"].state == "open"
        assert slow.max_in_flight <= 4
