"""The limiter shared through Redis (`gemimg_async.redis`), against a real redis-server on
127.0.0.1: places and starts across limiters, leases that expire, cancellation, an outage of
each kind, and separate processes sharing `max_concurrency` and `rpm` against one fake relay.

Each test keeps its Redis names apart with a prefix of its own; the outage tests run a server of
their own that they stop and start again.
"""

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import redis.asyncio

from gemimg_async import (
    ClientClosedError,
    ConfigurationError,
    GemimgError,
    LimiterUnavailableError,
    RedisLimiter,
)
from gemimg_async._limiter import SharedLimiter, endpoint_key
from gemimg_async.redis import DEFAULT_ASSUMED_PROCESSES
from gemimg_async.testing import FakeClock, FakeRelay
from helpers import API_KEY, SECRET, STANDARD, TIER_2K, free_port, wait_for

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("redis_worker.py")


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def limiters(prefix):
    """Make RedisLimiters under the test's prefix; each is closed after the test."""
    made: list[RedisLimiter] = []

    def make(url: str, **options) -> RedisLimiter:
        made.append(RedisLimiter(url, prefix=options.pop("prefix", prefix), **options))
        return made[-1]

    yield make
    for limiter in made:
        await limiter.aclose()


@pytest.fixture
async def raw(redis_server):
    """A plain client of the session's server, to look at what the limiter stored."""
    async with redis.asyncio.Redis.from_url(redis_server.url) as client:
        yield client


def closed_redis_url(password: str = "") -> str:
    return f"redis://{':' + password + '@' if password else ''}127.0.0.1:{free_port()}/0"


async def leases_in(client, prefix: str, key: str = "k") -> int:
    return await client.zcard(f"{prefix}:{{{key}}}:leases")


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --- configuration ---------------------------------------------------------------------------


def test_redis_limiter_is_a_shared_limiter():
    """The Redis limiter answers to the protocol the pool will call."""
    assert isinstance(RedisLimiter(closed_redis_url()), SharedLimiter)


@pytest.mark.parametrize(
    "options",
    [
        {"on_unreachable": "retry"},
        {"lease_ttl": 0},
        {"timeout": -1},
        {"poll_interval": float("nan")},
        {"processes": 0},
        {"burst": 0},
        {"prefix": "a{b}"},
        {"prefix": ""},
    ],
)
def test_options_no_limiter_can_keep_are_refused(options):
    """Bad options are a ConfigurationError when the limiter is made, before any request."""
    with pytest.raises(ConfigurationError):
        RedisLimiter(closed_redis_url(), **options)


def test_a_url_that_is_not_redis_is_refused():
    """http:// is no Redis URL: a ConfigurationError that says which schemes are."""
    with pytest.raises(ConfigurationError, match="redis://"):
        RedisLimiter("http://127.0.0.1:6379")


async def test_keys_that_would_break_a_cluster_slot_are_refused():
    """A limiter key is a plain name: empty or braced keys are refused before Redis is asked."""
    limiter = RedisLimiter(closed_redis_url(), on_unreachable="fail")
    for key in ("", "{x}"):
        with pytest.raises(ConfigurationError, match="key"):
            await limiter.acquire(key, 1)
        with pytest.raises(ConfigurationError, match="key"):
            await limiter.start(key, 60)
    await limiter.aclose()


def test_the_password_stays_out_of_the_repr():
    """A Redis password in the URL never shows in the limiter's repr or `where`."""
    limiter = RedisLimiter(closed_redis_url("hunter2-secret"))
    assert "hunter2" not in repr(limiter)
    assert "hunter2" not in limiter.where
    assert limiter.where.startswith("redis://127.0.0.1:")


def run_python(code: str) -> str:
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout


def test_importing_the_package_leaves_redis_unloaded():
    """`import gemimg_async` does not import redis; making a RedisLimiter does."""
    out = run_python(
        "import sys, gemimg_async as gi\n"
        "print('redis' in sys.modules)\n"
        "gi.RedisLimiter('redis://127.0.0.1:1/0')\n"
        "print('redis' in sys.modules)\n"
    )
    assert out.split() == ["False", "True"]


def test_without_the_redis_package_the_error_says_what_to_install():
    """Without the optional extra, RedisLimiter raises a ConfigurationError naming it."""
    out = run_python(
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "import gemimg_async as gi\n"
        "try:\n"
        "    gi.RedisLimiter('redis://127.0.0.1:1/0')\n"
        "except gi.ConfigurationError as error:\n"
        "    print(error)\n"
    )
    assert "pip install 'gemimg-async[redis]'" in out


# --- places ----------------------------------------------------------------------------------


async def test_limiters_share_the_places_of_a_key(redis_server, limiters, raw, prefix):
    """Tasks of two limiters (two processes, as far as Redis can tell) never hold more than
    max_concurrency places of a key together; every place is given back."""
    pair = [limiters(redis_server.url), limiters(redis_server.url)]
    most = now = 0

    async def work(limiter: RedisLimiter) -> None:
        nonlocal most, now
        lease = await limiter.acquire("k", 3)
        now += 1
        most = max(most, now)
        await anyio.sleep(0.02)
        now -= 1
        await limiter.release(lease)

    async with anyio.create_task_group() as group:
        for i in range(24):
            group.start_soon(work, pair[i % 2])
    assert most == 3
    assert await leases_in(raw, prefix) == 0
    assert sum(limiter.waits for limiter in pair) > 0


async def test_each_key_has_its_own_places(redis_server, limiters):
    """Two endpoints do not share places."""
    limiter = limiters(redis_server.url)
    with anyio.fail_after(5):
        await limiter.acquire("a", 1)
        await limiter.acquire("b", 1)
    assert (limiter.held("a"), limiter.held("b")) == (1, 1)


async def test_a_release_elsewhere_wakes_a_waiter_at_once(redis_server, limiters):
    """A waiter hears of a place freed by another process through pub/sub, long before its
    next poll (30 s here) or the lease's expiry (15 s)."""
    holder = limiters(redis_server.url, poll_interval=30)
    waiter = limiters(redis_server.url, poll_interval=30)
    lease = await holder.acquire("k", 1)
    got = anyio.Event()

    async def wait() -> None:
        await waiter.acquire("k", 1)
        got.set()

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await anyio.sleep(0.5)  # it has looked once, and listens
        assert not got.is_set()
        started = time.monotonic()
        await holder.release(lease)
        with anyio.fail_after(5):
            await got.wait()
    assert time.monotonic() - started < 5
    assert waiter.waits == 1


async def test_a_held_lease_outlives_its_ttl(redis_server, limiters, raw, prefix):
    """Renewal keeps places taken for as long as they are held, however long past the TTL."""
    holder = limiters(redis_server.url, lease_ttl=1.0)
    other = limiters(redis_server.url, lease_ttl=1.0)
    await holder.acquire("k", 2)
    await holder.acquire("k", 2)
    await anyio.sleep(2.5)
    with anyio.move_on_after(0.3) as scope:
        await other.acquire("k", 2)
    assert scope.cancelled_caught
    assert await leases_in(raw, prefix) == 2


async def test_an_abandoned_lease_expires_within_its_ttl(redis_server, limiters, raw, prefix):
    """A lease nobody renews (its process died) frees its place when it expires; the waiter
    looks again right then."""
    seconds, micros = await raw.time()
    expiry = seconds * 1000 + micros // 1000 + 800
    await raw.zadd(f"{prefix}:{{k}}:leases", {"dead-process:0": expiry})
    limiter = limiters(redis_server.url)
    started = time.monotonic()
    with anyio.fail_after(5):
        await limiter.acquire("k", 1)
    assert 0.5 < time.monotonic() - started < 3
    assert limiter.waits == 1


async def test_cancelled_acquires_never_leak_a_place(redis_server, limiters, raw, prefix):
    """Acquisitions cancelled at every point (before, during and after the script) leave
    Redis holding exactly the places the limiter handed out."""
    limiter = limiters(redis_server.url)
    delays = [0, 0.0002, 0.0005, 0.001, 0.002, 0.004, 0.05]
    leases = []
    for i in range(140):
        with anyio.move_on_after(delays[i % len(delays)]):
            leases.append(await limiter.acquire("k", 1000))
    await wait_for(lambda: not limiter._background)
    assert 0 < len(leases) < 140
    assert await leases_in(raw, prefix) == len(leases) == limiter.held("k")
    for lease in leases:
        await limiter.release(lease)
    assert await leases_in(raw, prefix) == 0


async def test_an_acquire_cancelled_while_redis_holds_its_script_gives_the_place_back(
    own_redis, limiters, prefix
):
    """Cancelled while its script waits in Redis (CLIENT PAUSE), the acquisition still takes
    the place when the script runs, and gives it back at once."""
    limiter = limiters(own_redis.url)
    async with redis.asyncio.Redis.from_url(own_redis.url) as client:
        await limiter.release(await limiter.acquire("k", 1))  # connected, listening
        await client.client_pause(600, all=False)  # scripts wait; reads go on
        with anyio.move_on_after(0.2) as scope:
            await limiter.acquire("k", 1)
        assert scope.cancelled_caught
        assert await leases_in(client, prefix) == 0
        await anyio.sleep(0.6)
        await wait_for(lambda: not limiter._background)
        assert await leases_in(client, prefix) == 0
        assert limiter.held("k") == 0


async def test_renewals_never_bring_a_released_place_back(redis_server, limiters, raw, prefix):
    """Releases racing renewals (a renewal every 50 ms) end with no place left taken."""
    limiter = limiters(redis_server.url, lease_ttl=0.2)

    async def churn() -> None:
        for _ in range(15):
            lease = await limiter.acquire("k", 4)
            await anyio.sleep(0.01)
            await limiter.release(lease)

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(churn)
    await anyio.sleep(0.3)  # renewals after the last release
    await wait_for(lambda: not limiter._background)
    assert await leases_in(raw, prefix) == 0


async def test_aclose_returns_when_the_background_work_will_not_stop(
    redis_server, limiters, raw, monkeypatch, caplog
):
    """A Redis client that will not let go when cancelled (as one can hang while its server
    restarts) does not hang close: aclose gives the places back and returns within twice the
    limiter's timeout, with a warning."""

    let_go = asyncio.Event()

    async def stubborn(self) -> None:
        while not let_go.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)

    monkeypatch.setattr(RedisLimiter, "_listen", stubborn)
    limiter = limiters(redis_server.url, timeout=0.5)
    await limiter.acquire("k", 2)
    started = time.monotonic()
    with anyio.fail_after(10):
        await limiter.aclose()
    assert time.monotonic() - started < 2 * 0.5 + 1.0
    assert await leases_in(raw, limiter.prefix) == 0
    assert "did not stop" in caplog.text
    let_go.set()  # nothing of the test outlives it
    with anyio.fail_after(5):
        await asyncio.wait([limiter._task])


async def test_aclose_gives_every_place_back_and_refuses_after(redis_server, limiters, raw, prefix):
    """Closing releases what is held, stops counting as a peer, wakes waiters with
    ClientClosedError, and refuses later calls."""
    limiter = limiters(redis_server.url)
    for _ in range(2):
        await limiter.acquire("k", 2)
    failed = []

    async def wait() -> None:
        with pytest.raises(ClientClosedError):
            await limiter.acquire("k", 2)
        failed.append(True)

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await anyio.sleep(0.2)
        await limiter.aclose()
    assert failed == [True]
    assert await leases_in(raw, prefix) == 0
    assert await raw.zcard(f"{prefix}:{{k}}:peers") == 0
    with pytest.raises(ClientClosedError):
        await limiter.acquire("k", 2)


async def test_redis_keeps_no_secret(redis_server, limiters, raw, prefix):
    """Keyed by endpoint_key, Redis holds neither the API key nor the relay's URL."""
    key = endpoint_key("https://relay.example/v1", SECRET)
    limiter = limiters(redis_server.url)
    await limiter.acquire(key, 2)
    await limiter.start(key, 600)
    stored = []
    for name in await raw.keys(f"{prefix}*"):
        kind = (await raw.type(name)).decode()
        values = await raw.zrange(name, 0, -1) if kind == "zset" else [await raw.get(name)]
        stored += [name, *values]
    assert len(stored) > 3
    text = b" ".join(stored).decode()
    assert SECRET not in text
    assert "relay.example" not in text


# --- starts ----------------------------------------------------------------------------------


async def test_starts_are_reserved_on_redis_time(redis_server, limiters):
    """The script reserves one start per interval in order of asking, a burst first."""
    one = limiters(redis_server.url)
    waits = [await one._store.reserve("r1", 60, 1) for _ in range(3)]
    assert waits[0] == 0
    assert waits[1] == pytest.approx(1.0, abs=0.1)
    assert waits[2] == pytest.approx(2.0, abs=0.1)
    waits = [await one._store.reserve("r3", 60, 3) for _ in range(5)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3:] == [pytest.approx(1.0, abs=0.1), pytest.approx(2.0, abs=0.1)]


async def test_limiters_share_the_rate_of_a_key(redis_server, limiters):
    """Starts from two limiters at rpm=1200 come at most one per 50 ms between them."""
    pair = [limiters(redis_server.url), limiters(redis_server.url)]
    starts = []

    async def start(limiter: RedisLimiter) -> None:
        await limiter.start("k", 1200)
        starts.append(time.monotonic())

    async with anyio.create_task_group() as group:
        for i in range(20):
            group.start_soon(start, pair[i % 2])
    starts.sort()
    assert starts[-1] - starts[0] >= 19 * 0.05 - 0.1
    assert all(sum(t <= s < t + 0.5 for s in starts) <= 10 + 3 for t in starts)


# --- Redis unreachable -----------------------------------------------------------------------


async def test_unreachable_redis_falls_back_to_a_local_share_then_shares_again(
    own_redis, limiters, caplog
):
    """Redis gone mid-run, on_unreachable="local": each process keeps its share of the limit
    (1/2 of 8 places with two processes seen) and warns once; back, the places held meanwhile
    count in Redis again and the limits are shared again."""
    caplog.set_level(logging.INFO, "gemimg_async")
    mine = limiters(own_redis.url, lease_ttl=1.0)
    peer = limiters(own_redis.url, lease_ttl=1.0)
    await peer.release(await peer.acquire("k", 8))
    leases = [await mine.acquire("k", 8) for _ in range(2)]
    own_redis.stop()
    with anyio.fail_after(5):
        leases += [await mine.acquire("k", 8) for _ in range(2)]
    assert not mine.shared
    with anyio.move_on_after(0.5) as scope:
        await mine.acquire("k", 8)
    assert scope.cancelled_caught
    await mine.start("k", 6000)
    await mine.release(leases.pop())
    leases.append(await mine.acquire("k", 8))
    await wait_for(lambda: not peer.shared)
    assert len(warnings_in(caplog)) == 2  # one per limiter, for all those calls
    assert "local share" in warnings_in(caplog)[0]

    own_redis.start()
    await wait_for(lambda: mine.shared)
    async with redis.asyncio.Redis.from_url(own_redis.url) as client:
        assert await leases_in(client, mine.prefix) == 4
        for lease in leases:
            await mine.release(lease)
        assert await leases_in(client, mine.prefix) == 0
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert len(warnings_in(caplog)) == 2
    assert mine.outages == 1


async def test_unreachable_redis_fails_when_told_to(own_redis, limiters, caplog):
    """Redis gone mid-run, on_unreachable="fail": acquisitions and starts raise
    LimiterUnavailableError (a GemimgError) before anything is sent; a release does not raise;
    one warning; back, it works again."""
    limiter = limiters(own_redis.url, on_unreachable="fail")
    lease = await limiter.acquire("k", 2)
    own_redis.stop()
    for _ in range(2):
        with pytest.raises(LimiterUnavailableError, match="nothing was sent") as info:
            await limiter.acquire("k", 2)
        with pytest.raises(LimiterUnavailableError):
            await limiter.start("k", 60)
    assert isinstance(info.value, GemimgError)
    assert limiter.where in str(info.value)
    await limiter.release(lease)
    assert len(warnings_in(caplog)) == 1
    own_redis.start()
    with anyio.fail_after(5):
        await limiter.release(await limiter.acquire("k", 2))
    assert limiter.shared


async def test_refused_credentials_are_a_configuration_error(own_redis, limiters):
    """A wrong Redis password is no outage to ride out: ConfigurationError, in either mode,
    without the password in it."""
    async with redis.asyncio.Redis.from_url(own_redis.url) as client:
        await client.config_set("requirepass", "right-password")
    url = own_redis.url.replace("redis://", "redis://:wrong-password@")
    for mode in ("local", "fail"):
        limiter = limiters(url, on_unreachable=mode)
        with pytest.raises(ConfigurationError, match="refused") as info:
            await limiter.acquire("k", 1)
        assert "wrong-password" not in str(info.value)
        assert limiter.shared


async def test_redis_never_reached_gives_the_assumed_share(limiters):
    """Redis down from the start: 1/8 of the places (DEFAULT_ASSUMED_PROCESSES), or 1/N with
    `processes=N`; the rate is shared the same way."""
    assert DEFAULT_ASSUMED_PROCESSES == 8
    for processes, share in [(None, 2), (4, 4)]:
        clock = FakeClock()
        limiter = limiters(closed_redis_url(), processes=processes, clock=clock)
        for _ in range(share):
            with anyio.fail_after(5):
                await limiter.acquire("k", 16)
        with anyio.move_on_after(0.3) as scope:
            await limiter.acquire("k", 16)
        assert scope.cancelled_caught
        for _ in range(2):
            await limiter.start("k", 60)
        assert clock.sleeps == [float(processes or 8)]  # 60 rpm / N: a start per N seconds


async def test_errors_and_warnings_keep_the_password_out(limiters, caplog):
    """The Redis password appears in no error and no log line."""
    failing = limiters(closed_redis_url("hunter2-secret"), on_unreachable="fail")
    with pytest.raises(LimiterUnavailableError) as info:
        await failing.acquire("k", 1)
    falling_back = limiters(closed_redis_url("hunter2-secret"))
    await falling_back.acquire("k", 1)
    assert "hunter2" not in str(info.value)
    assert len(caplog.records) >= 2
    assert "hunter2" not in caplog.text


# --- separate processes ----------------------------------------------------------------------


def worker(**config) -> subprocess.Popen:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, str(WORKER), json.dumps(config)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=WORKER.parent,
    )


async def read_line(process: subprocess.Popen) -> str:
    """The worker's next line; TimeoutError after 60 s (the reading thread is abandoned, so the
    caller's cleanup kills the worker, which ends the read)."""
    with anyio.fail_after(60):
        line = await anyio.to_thread.run_sync(process.stdout.readline, abandon_on_cancel=True)
    return line.strip()


def most_at_once(requests) -> int:
    """The most of `requests` the relay was handling at one moment."""
    edges = sorted(
        [(r.started, 1) for r in requests] + [(r.finished, -1) for r in requests],
        key=lambda edge: (edge[0], edge[1]),  # an end before a start at the same moment
    )
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


async def run_workers(config, go, count=4):
    """Start `count` worker processes of `config`, let them go together once all are ready, and
    return their reports."""
    processes = [worker(**config) for _ in range(count)]
    try:
        assert [await read_line(p) for p in processes] == ["ready"] * count
        go.touch()
        return [json.loads(await read_line(p)) for p in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()
            process.stdout.close()


async def test_four_processes_share_max_concurrency_and_rpm(redis_server, prefix, tmp_path):
    """4 processes sharing max_concurrency=8 and an rpm through Redis, against one relay, for
    two endpoints (keys) in turn: with slow answers (0.5 s: the places bind) the relay never has
    more than 8 of the endpoint's requests in flight; with quick ones (rpm=600 binds) they start
    at most 10 a second."""
    slow, quick = STANDARD, TIER_2K
    go = tmp_path / "go"
    latency = {slow: 0.5, quick: 0.05}
    async with FakeRelay(api_keys=frozenset({API_KEY}), latency=latency) as relay:
        config = {
            "mode": "run",
            "redis": redis_server.url,
            "prefix": prefix,
            "relay": relay.url,
            "max_concurrency": 8,
            "phases": [
                {"key": "places", "model": slow, "requests": 10, "rpm": 6000},
                {"key": "rate", "model": quick, "requests": 10, "rpm": 600},
            ],
            "ttl": 5.0,
            "go": str(go),
        }
        reports = await run_workers(config, go)
    statuses = [status for report in reports for status in report["statuses"]]
    assert statuses == [200] * 80
    assert relay.generation_count == 80
    slow_ones = [r for r in relay.requests if r.model == slow]
    quick_ones = [r for r in relay.requests if r.model == quick]
    assert most_at_once(slow_ones) == 8  # never more, and the places did bind
    assert most_at_once(quick_ones) <= 8
    starts = sorted(r.started for r in quick_ones)
    assert len(starts) == 40
    assert starts[-1] - starts[0] >= 39 * 0.1 - 0.3
    assert all(sum(t <= s < t + 1 for s in starts) <= 10 + 3 for t in starts)


async def test_four_processes_of_clients_share_their_limits(redis_server, prefix, tmp_path):
    """4 processes, each a gi.Client(max_concurrency=8, rpm=6000, limiter=RedisLimiter(...))
    making 12 calls at once against one slow relay: every call gets its image, and the relay
    never has more than 8 in flight from the four together (the places did bind)."""
    go = tmp_path / "go"
    async with FakeRelay(api_keys=frozenset({API_KEY}), latency=0.5) as relay:
        config = {
            "mode": "client",
            "redis": redis_server.url,
            "prefix": prefix,
            "relay": relay.url,
            "max_concurrency": 8,
            "rpm": 6000,
            "requests": 12,
            "ttl": 5.0,
            "go": str(go),
        }
        reports = await run_workers(config, go)
    assert [n for report in reports for n in report["images"]] == [1] * 48
    assert relay.generation_count == 48
    assert most_at_once(relay.requests) == 8


async def test_a_killed_process_gives_its_places_back_within_the_ttl(
    redis_server, limiters, prefix
):
    """A process holding all 8 places keeps them past the TTL while alive; killed with -9, its
    places come back within the TTL (2 s)."""
    victim = worker(
        mode="hold", redis=redis_server.url, prefix=prefix, key="k", hold=8, max_concurrency=8,
        ttl=2.0,
    )  # fmt: skip
    try:
        assert await read_line(victim) == "held"
        other = limiters(redis_server.url, lease_ttl=2.0)
        with anyio.move_on_after(3) as scope:
            await other.acquire("k", 8)
        assert scope.cancelled_caught
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        with anyio.fail_after(10):
            for _ in range(8):
                await other.acquire("k", 8)
        assert time.monotonic() - killed < 2.0 + 1.0
    finally:
        victim.kill()
        victim.wait()
        victim.stdout.close()
