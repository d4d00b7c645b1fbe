"""The pool's limits (`_limits`): the adaptive in-flight limit and the rate limit, as units with
no server and no real waits, then end to end against the fake relay.
"""

import asyncio
import math
from contextlib import AsyncExitStack

import anyio
import anyio.lowlevel
import attrs
import pytest

from gemimg_async import Client, ConfigurationError, PoolTimeoutError, RateLimitError, RetryPolicy
from gemimg_async._limits import (
    DEFAULT_DECREASE_FACTOR,
    DEFAULT_INCREASE_AFTER,
    AdaptiveLimit,
    Pool,
    RateLimit,
    Slot,
    check_pool_timeout,
)
from gemimg_async.testing import FakeClock, Fault
from helpers import API_KEY

pytestmark = pytest.mark.anyio


# --- AdaptiveLimit -----------------------------------------------------------------------------


def test_limit_starts_at_its_maximum():
    """A fresh pool allows its maximum in flight."""
    limit = AdaptiveLimit(8)
    assert (limit.maximum, limit.limit, limit.in_flight, limit.waiting, limit.waits) == (
        8,
        8,
        0,
        0,
        0,
    )


@pytest.mark.parametrize("maximum", [0, -1])
def test_limit_needs_at_least_one_place(maximum):
    """A pool without a single place is refused."""
    with pytest.raises(ConfigurationError, match="at least 1"):
        AdaptiveLimit(maximum)


def test_defaults_are_the_documented_aimd():
    """Throttling multiplies by 0.7; ten successes add one."""
    assert DEFAULT_DECREASE_FACTOR == 0.7
    assert DEFAULT_INCREASE_AFTER == 10


def throttle_in_a_fresh_epoch(limit: AdaptiveLimit) -> None:
    """Throttle a request that got its place after every earlier shrink."""
    limit.throttled(Slot(limit._epoch))


def test_throttling_shrinks_by_the_factor_down_to_one():
    """Each throttle in a new epoch multiplies by 0.7, rounded down, and never goes below 1."""
    limit = AdaptiveLimit(8)
    seen = []
    for _ in range(6):
        throttle_in_a_fresh_epoch(limit)
        seen.append(limit.limit)
    assert seen == [5, 3, 2, 1, 1, 1]


async def test_throttling_counts_once_per_epoch():
    """Many 429s from requests that were in flight together shrink the limit once."""
    limit = AdaptiveLimit(8)
    async with AsyncExitStack() as stack:
        slots = [await stack.enter_async_context(limit.slot()) for _ in range(4)]
        for slot in slots:
            limit.throttled(slot)
        assert limit.limit == 5
    async with limit.slot() as fresh:
        limit.throttled(fresh)
        limit.throttled(fresh)
    assert limit.limit == 3


def test_successes_grow_the_limit_one_per_increase_after():
    """Ten successes in a row add one place, up to the maximum and no further."""
    limit = AdaptiveLimit(4)
    throttle_in_a_fresh_epoch(limit)
    throttle_in_a_fresh_epoch(limit)
    assert limit.limit == 1
    history = []
    for _ in range(50):
        limit.succeeded()
        history.append(limit.limit)
    assert history[8] == 1
    assert history[9] == 2
    assert history[19] == 3
    assert history[29] == 4
    assert history[-1] == 4


def test_a_throttle_restarts_the_count_of_successes():
    """Successes before a throttle do not count towards growing back."""
    limit = AdaptiveLimit(8)
    throttle_in_a_fresh_epoch(limit)
    for _ in range(9):
        limit.succeeded()
    throttle_in_a_fresh_epoch(limit)
    assert limit.limit == 3
    for _ in range(9):
        limit.succeeded()
    assert limit.limit == 3
    limit.succeeded()
    assert limit.limit == 4


def test_successes_at_the_maximum_change_nothing():
    """A pool at its maximum stays there however well things go."""
    limit = AdaptiveLimit(3)
    for _ in range(100):
        limit.succeeded()
    assert limit.limit == 3


def test_custom_factor_and_increase_after():
    """The decrease factor and the successes per step are settable."""
    limit = AdaptiveLimit(10, decrease_factor=0.5, increase_after=2)
    throttle_in_a_fresh_epoch(limit)
    assert limit.limit == 5
    limit.succeeded()
    assert limit.limit == 5
    limit.succeeded()
    assert limit.limit == 6


async def test_holders_keep_their_places_when_the_limit_drops():
    """A shrink below what is borrowed lets holders finish; newcomers wait until room is made."""
    limit = AdaptiveLimit(3)
    entered = []
    holders = [AsyncExitStack() for _ in range(3)]
    slots = [await holder.enter_async_context(limit.slot()) for holder in holders]
    limit.throttled(slots[0])
    assert limit.limit == 2
    assert limit.in_flight == 3

    async def newcomer():
        async with limit.slot():
            entered.append(limit.in_flight)

    async with anyio.create_task_group() as tg:
        tg.start_soon(newcomer)
        await wait_until(lambda: limit.waiting == 1)
        await holders[0].aclose()
        for _ in range(100):
            await anyio.lowlevel.checkpoint()
        assert entered == []
        assert limit.waiting == 1
        await holders[1].aclose()
    assert entered == [2]
    await holders[2].aclose()
    assert limit.in_flight == 0
    assert limit.waits == 1


async def test_waits_counts_only_acquisitions_that_found_the_pool_full():
    """Getting a free place is not a wait; queueing for one is."""
    limit = AdaptiveLimit(1)
    async with limit.slot():
        assert limit.waits == 0
        async with anyio.create_task_group() as tg:

            async def second():
                async with limit.slot():
                    pass

            tg.start_soon(second)
            await wait_until(lambda: limit.waiting == 1)
            assert limit.waits == 1
            tg.cancel_scope.cancel()
    async with limit.slot():
        pass
    assert limit.waits == 1
    assert limit.in_flight == 0


def test_a_free_place_is_taken_without_a_trip_through_the_event_loop():
    """With room in the pool, acquire returns at its first step: no await, no wake-up."""
    limit = AdaptiveLimit(2)
    step = limit.acquire().__await__()
    with pytest.raises(StopIteration) as done:
        step.send(None)
    assert isinstance(done.value.value, Slot)
    assert limit.in_flight == 1
    assert limit.waits == 0


async def test_waiters_get_places_in_the_order_they_came():
    """Requests that found the pool full get their places first come, first served."""
    limit = AdaptiveLimit(1)
    order = []

    async def waiter(name):
        async with limit.slot():
            order.append(name)
            await anyio.lowlevel.checkpoint()

    async with AsyncExitStack() as holder:
        await holder.enter_async_context(limit.slot())
        async with anyio.create_task_group() as tg:
            for name in range(6):
                tg.start_soon(waiter, name)
                await wait_until(lambda n=name: limit.waiting == n + 1)
            await holder.aclose()
    assert order == list(range(6))
    assert (limit.in_flight, limit.waiting, limit.waits) == (0, 0, 6)


async def test_a_newcomer_does_not_jump_the_queue():
    """A place given back goes to the first waiter, even if a newcomer asks before it resumes."""
    limit = AdaptiveLimit(1)
    holder = await limit.acquire()
    got = []

    async def waiter():
        got.append(await limit.acquire())

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_until(lambda: limit.waiting == 1)
        limit.release(holder)
        assert limit.try_acquire() is None  # the place is the waiter's already
        assert limit.in_flight == 1
    assert len(got) == 1
    limit.release(got[0])
    assert limit.in_flight == 0


async def test_a_waiter_cancelled_after_being_handed_a_place_passes_it_on():
    """Cancellation between the hand-over and the waiter's resumption loses no place."""
    limit = AdaptiveLimit(1)
    holder = await limit.acquire()
    entered = []

    async def waiter(name):
        async with limit.slot():
            entered.append(name)

    first = asyncio.create_task(waiter("first"))
    await wait_until(lambda: limit.waiting == 1)
    second = asyncio.create_task(waiter("second"))
    await wait_until(lambda: limit.waiting == 2)
    limit.release(holder)  # handed to the first waiter, which has not resumed yet
    first.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    assert first.cancelled()
    assert entered == ["second"]
    assert (limit.in_flight, limit.waiting) == (0, 0)


async def test_cancelled_waiters_leave_nothing_behind():
    """Waiters cancelled in the queue are not counted, and hold no place up afterwards."""
    limit = AdaptiveLimit(1)
    holder = await limit.acquire()
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(limit.acquire)
        await wait_until(lambda: limit.waiting == 3)
        tg.cancel_scope.cancel()
    assert (limit.in_flight, limit.waiting) == (1, 0)
    limit.release(holder)
    slot = limit.try_acquire()
    assert slot is not None
    limit.release(slot)
    assert limit.in_flight == 0


async def test_growing_back_lets_a_waiter_in():
    """A place added by successes goes at once to the first waiter."""
    limit = AdaptiveLimit(2, increase_after=1)
    throttle_in_a_fresh_epoch(limit)
    assert limit.limit == 1
    holder = await limit.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(limit.acquire)
        await wait_until(lambda: limit.waiting == 1)
        limit.succeeded()
    assert (limit.limit, limit.in_flight, limit.waiting) == (2, 2, 0)
    limit.release(holder)


async def test_a_place_given_back_twice_is_an_error():
    """Releasing the same place twice raises rather than letting one more in."""
    limit = AdaptiveLimit(1)
    slot = await limit.acquire()
    limit.release(slot)
    with pytest.raises(KeyError):
        limit.release(slot)
    assert limit.in_flight == 0


async def wait_until(condition, *, polls: int = 1000) -> None:
    """Yield to other tasks until `condition()` holds."""
    for _ in range(polls):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition never held")


# --- RateLimit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rpm", [0, -5, math.nan])
def test_rate_must_be_positive(rpm):
    """A rate of zero (or less, or NaN) is refused."""
    with pytest.raises(ConfigurationError, match="rpm"):
        RateLimit(rpm, FakeClock())


async def test_first_start_never_waits():
    """The first request starts at once."""
    clock = FakeClock()
    rate = RateLimit(60, clock)
    await rate.wait()
    assert clock.sleeps == []
    assert rate.waits == 0


@pytest.mark.parametrize(("rpm", "gap"), [(60, 1.0), (120, 0.5), (6, 10.0), (1, 60.0)])
async def test_starts_are_evenly_spaced(rpm, gap):
    """Back-to-back starts wait 60/rpm seconds each."""
    clock = FakeClock()
    rate = RateLimit(rpm, clock)
    for _ in range(4):
        await rate.wait()
    assert clock.sleeps == pytest.approx([gap, gap, gap])
    assert rate.waits == 3


async def test_idle_time_is_not_saved_up():
    """After a long pause one request starts at once, but the next is spaced again."""
    clock = FakeClock()
    rate = RateLimit(60, clock)
    await rate.wait()
    clock.now += 3600
    await rate.wait()
    assert clock.sleeps == []
    await rate.wait()
    assert clock.sleeps == pytest.approx([1.0])
    assert rate.waits == 1


async def test_a_partly_elapsed_gap_waits_only_for_the_rest():
    """A request that comes 0.4 s after the last waits 0.6 s at 60 rpm."""
    clock = FakeClock()
    rate = RateLimit(60, clock)
    await rate.wait()
    clock.now += 0.4
    await rate.wait()
    assert clock.sleeps == pytest.approx([0.6])


async def test_concurrent_starts_queue_one_gap_apart():
    """Tasks arriving together start one gap apart, without overlap."""
    clock = FakeClock()
    rate = RateLimit(30, clock)
    began = clock.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(rate.wait)
    assert clock.monotonic() - began == pytest.approx(6.0)
    assert len(clock.sleeps) == 3
    assert rate.waits == 3


# --- adaptive concurrency, end to end ----------------------------------------------------------


async def test_repeated_429s_shrink_the_limit_to_one(relay, clock):
    """Each throttled request (in a new epoch) shrinks the limit: 8, 5, 3, 2, 1, never 0."""
    async with Client(API_KEY, relay.url, clock=clock, retry=RetryPolicy.never()) as client:
        assert client.stats.limit == 8
        limits, attempts = [], 0
        for _ in range(5):
            relay.script(Fault.rate_limited())
            with pytest.raises(RateLimitError) as info:
                await client.generate("a fox")
            limits.append(client.stats.limit)
            attempts += info.value.attempts
    assert limits == [5, 3, 2, 1, 1]
    assert relay.generation_count == attempts == 5


async def test_successes_grow_the_limit_back_one_per_ten(relay, clock):
    """After shrinking to 1, every ten successes add one place, up to max_concurrency."""
    async with Client(API_KEY, relay.url, clock=clock, retry=RetryPolicy.never()) as client:
        for _ in range(4):
            relay.script(Fault.rate_limited())
            with pytest.raises(RateLimitError):
                await client.generate("a fox")
        assert client.stats.limit == 1
        limits, attempts = [], 4
        for _ in range(80):
            attempts += (await client.generate("a fox")).attempts
            limits.append(client.stats.limit)
    assert relay.generation_count == attempts == 84
    assert limits[8::10] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert limits[9::10] == [2, 3, 4, 5, 6, 7, 8, 8]
    assert max(limits) == 8


async def test_429s_of_requests_in_flight_together_shrink_once(relay, clock):
    """Four requests throttled in the same epoch shrink the limit once, not four times."""
    relay.script(*[Fault.rate_limited()] * 4)
    errors = []
    async with Client(API_KEY, relay.url, clock=clock, retry=RetryPolicy.never()) as client:

        async def one():
            try:
                await client.generate("a fox")
            except RateLimitError as error:
                errors.append(error)

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)
        assert client.stats.limit == 5
    assert len(errors) == 4
    assert relay.generation_count == sum(error.attempts for error in errors)


async def test_each_retry_of_one_request_is_a_new_signal(relay, client):
    """A retry goes out under the limit of its time, so each further 429 shrinks it again."""
    relay.script(*[Fault.rate_limited("0")] * 4)
    result = await client.generate("a fox")
    assert client.stats.limit == 1  # 8, 5, 3, 2, 1
    assert relay.generation_count == result.attempts == 5


async def test_a_burst_of_429s_in_flight_together_shrinks_once(relay, client):
    """Eight requests throttled while in flight together shrink the limit once, not eight times;
    their retries then queue under the smaller limit."""
    relay.script(*[Fault.rate_limited("0")] * 8)
    relay.latency = 0.05
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(client.generate, "a fox")
    finally:
        relay.latency = 0.0
    assert client.stats.limit == 5
    assert relay.generation_count == 16
    assert client.stats.pool_waits >= 3  # eight retries, five places


# --- rate, end to end --------------------------------------------------------------------------


async def test_rpm_spaces_starts(relay, clock):
    """With rpm=60, back-to-back requests wait one second each before starting."""
    async with Client(API_KEY, relay.url, clock=clock, rpm=60) as client:
        results = [await client.generate("a fox") for _ in range(3)]
        assert client.stats.rate_waits == 2
    assert clock.sleeps == [pytest.approx(1.0), pytest.approx(1.0)]
    assert relay.generation_count == sum(result.attempts for result in results) == 3


async def test_without_rpm_nothing_waits(relay, client, clock):
    """No rpm, no rate waits."""
    attempts = sum([(await client.generate("a fox")).attempts for _ in range(3)])
    assert client.stats.rate_waits == 0
    assert clock.sleeps == []
    assert relay.generation_count == attempts == 3


# --- Pool: pool_timeout ------------------------------------------------------------------------


@attrs.define
class GatedClock(FakeClock):
    """A FakeClock whose sleeps wait for `gate` first: time passes only when the test says."""

    gate: anyio.Event = attrs.Factory(anyio.Event)

    async def sleep(self, seconds: float) -> None:
        await self.gate.wait()
        await super().sleep(seconds)


async def test_a_full_pool_times_out_after_its_patience_holding_nothing():
    """A waiter gives up after `patience` seconds on the clock: PoolTimeoutError naming the
    pool's size and the wait, and it holds no place and waits no longer."""
    clock = FakeClock()
    pool = Pool(AdaptiveLimit(2), clock=clock)
    held = [await pool.acquire(), await pool.acquire()]
    with pytest.raises(PoolTimeoutError, match=r"within 2\.5 s .*max_concurrency=2.*nothing was"):
        await pool.acquire(2.5)
    assert clock.sleeps == [2.5]
    assert (pool.limit.in_flight, pool.limit.waiting) == (2, 0)
    await pool.release(held[0])
    assert pool.limit.try_acquire() is not None


async def test_zero_patience_fails_at_once_without_waiting():
    """pool_timeout=0 takes a free place at once, and fails at once (no wait, no sleep) when
    the pool is full."""
    clock = FakeClock()
    pool = Pool(AdaptiveLimit(1), clock=clock)
    await pool.acquire(0)
    with pytest.raises(PoolTimeoutError, match="within 0 s"):
        await pool.acquire(0)
    assert clock.sleeps == []
    assert pool.limit.waits == 0


async def test_a_place_freed_within_the_patience_is_taken():
    """A place given back before the timeout passes goes to the waiter, which keeps it."""
    clock = GatedClock()
    pool = Pool(AdaptiveLimit(1), clock=clock)
    holder = await pool.acquire()
    async with anyio.create_task_group() as group:
        got = []

        async def wait():
            got.append(await pool.acquire(10))

        group.start_soon(wait)
        while pool.limit.waiting == 0:
            await anyio.lowlevel.checkpoint()
        await pool.release(holder)
    assert len(got) == 1
    assert pool.limit.in_flight == 1
    assert clock.sleeps == []  # the timer never fired


async def test_the_rate_counts_towards_the_patience():
    """A start the rate would make wait longer than what is left of the patience is not
    reserved: PoolTimeoutError at once, the place given back, the next start unchanged."""
    clock = FakeClock()
    pool = Pool(AdaptiveLimit(4), RateLimit(6, clock), clock=clock)  # a start every 10 s
    first = await pool.acquire(5)
    with pytest.raises(PoolTimeoutError):
        await pool.acquire(5)
    assert pool.limit.in_flight == 1
    assert clock.sleeps == []
    await pool.acquire(10)  # waits out the rest of the 10 s gap
    assert clock.sleeps == [10.0]
    await pool.release(first)


@pytest.mark.parametrize("bad", [-1, "5", True, math.nan])
def test_a_bad_pool_timeout_is_refused(bad):
    """pool_timeout is None or seconds, 0 or more."""
    with pytest.raises(ConfigurationError, match="pool_timeout"):
        check_pool_timeout(bad)
