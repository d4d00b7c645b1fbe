"""Unit tests of the pool's limits and the retry arithmetic: no server, no real waits."""

import email.utils
import math
import random
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gemimg_async import Backoff, ConfigurationError, RetryPolicy
from gemimg_async._limits import (
    DEFAULT_DECREASE_FACTOR,
    DEFAULT_INCREASE_AFTER,
    AdaptiveLimit,
    RateLimit,
    Slot,
)
from gemimg_async._retry import RetryBudget, parse_retry_after
from gemimg_async.testing import FakeClock

pytestmark = pytest.mark.anyio

NOW = 1_700_000_000.0


def headers(**fields: str) -> CIMultiDict[str]:
    """Response headers as aiohttp hands them over: names case-insensitive."""
    return CIMultiDict({name.replace("_", "-"): value for name, value in fields.items()})


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


# --- RetryBudget -------------------------------------------------------------------------------


def test_budget_starts_full():
    """A new budget holds all its tokens."""
    budget = RetryBudget(10.0, 0.1)
    assert budget.tokens == 10.0


def test_budget_allows_retries_while_above_half():
    """Failures cost a token each; retries stop once half or less is left."""
    budget = RetryBudget(10.0, 0.1)
    allowed = [budget.failed() for _ in range(7)]
    assert allowed == [True, True, True, True, False, False, False]
    assert budget.tokens == 3.0


def test_budget_never_goes_below_zero():
    """A relay that fails forever drains the budget to zero, not below."""
    budget = RetryBudget(4.0, 0.5)
    for _ in range(20):
        budget.failed()
    assert budget.tokens == 0.0


def test_successes_refill_the_budget_by_the_ratio_up_to_the_maximum():
    """Each success earns `ratio` of a token back, never more than `max_tokens`."""
    budget = RetryBudget(10.0, 0.1)
    for _ in range(6):
        budget.failed()
    assert budget.tokens == 4.0
    assert not budget.failed()
    assert budget.tokens == 3.0
    for _ in range(40):
        budget.succeeded()
    assert budget.tokens == pytest.approx(7.0)
    assert budget.failed()
    for _ in range(1000):
        budget.succeeded()
    assert budget.tokens == 10.0


def test_policy_budget_defaults():
    """The client's default budget: 10 tokens, a tenth back per success."""
    policy = RetryPolicy()
    assert (policy.budget_tokens, policy.budget_ratio) == (10.0, 0.1)


# --- Backoff -----------------------------------------------------------------------------------


def test_policy_backoffs_are_the_documented_ones():
    """Not sent: 0.5 s doubling to 8 s; throttled: 5 s doubling to 60 s, full jitter."""
    policy = RetryPolicy()
    assert policy.not_sent_backoff == Backoff(0.5, 2.0, 8.0, full_jitter=False)
    assert policy.throttled_backoff == Backoff(5.0, 2.0, 60.0, full_jitter=True)
    assert policy.download_backoff == Backoff(0.5, 2.0, 8.0, full_jitter=False)
    assert (policy.not_sent_attempts, policy.throttled_attempts) == (3, 5)
    assert (policy.server_attempts, policy.outcome_unknown_attempts) == (2, 1)
    assert policy.max_retry_after == 120.0


@given(retry=st.integers(0, 40), seed=st.integers(0, 2**32))
def test_half_jitter_stays_between_half_and_all_of_the_ceiling(retry, seed):
    """Without full jitter the k-th wait is in [c/2, c], c = min(0.5 * 2**k, 8)."""
    ceiling = min(0.5 * 2**retry, 8.0)
    delay = RetryPolicy().not_sent_backoff.delay(retry, random.Random(seed))  # noqa: S311 - jitter, not secrets
    assert ceiling / 2 <= delay <= ceiling


@given(retry=st.integers(0, 40), seed=st.integers(0, 2**32))
def test_full_jitter_stays_between_zero_and_the_ceiling(retry, seed):
    """With full jitter the k-th wait is in [0, c], c = min(5 * 2**k, 60)."""
    ceiling = min(5.0 * 2**retry, 60.0)
    delay = RetryPolicy().throttled_backoff.delay(retry, random.Random(seed))  # noqa: S311 - jitter, not secrets
    assert 0.0 <= delay <= ceiling


@pytest.mark.parametrize(
    ("retry", "ceiling"), [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (60, 8.0)]
)
def test_backoff_ceiling_doubles_then_caps(retry, ceiling):
    """The ceiling doubles per retry until the maximum, where it stays."""
    backoff = Backoff(0.5, maximum=8.0)

    class Top(random.Random):
        def uniform(self, _low, high):
            return high

    assert backoff.delay(retry, Top()) == ceiling


def test_jitter_spreads_waits():
    """Two clients that fail together do not come back together."""
    backoff = Backoff(5.0, maximum=60.0, full_jitter=True)
    rng = random.Random(1)  # noqa: S311 - jitter, not secrets
    assert len({backoff.delay(2, rng) for _ in range(20)}) == 20


# --- parse_retry_after -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("2", 2.0), (" 7 ", 7.0), ("1.5", 1.5), ("120", 120.0), ("121", 121.0)],
)
def test_retry_after_seconds(value, seconds):
    """`Retry-After: <seconds>` is read as seconds, large values included (the caller caps)."""
    assert parse_retry_after(headers(retry_after=value), NOW) == seconds


@pytest.mark.parametrize(("value", "seconds"), [("1500", 1.5), ("0", 0.0), ("250.5", 0.2505)])
def test_retry_after_ms(value, seconds):
    """`retry-after-ms` is read in milliseconds."""
    assert parse_retry_after(headers(retry_after_ms=value), NOW) == pytest.approx(seconds)


def test_retry_after_ms_wins_over_retry_after():
    """With both headers, the finer one counts."""
    found = parse_retry_after(headers(retry_after="9", retry_after_ms="1500"), NOW)
    assert found == pytest.approx(1.5)


def test_unreadable_retry_after_ms_falls_back_to_retry_after():
    """A garbled `retry-after-ms` does not hide a good `Retry-After`."""
    assert parse_retry_after(headers(retry_after="3", retry_after_ms="soon"), NOW) == 3.0


def test_header_names_are_case_insensitive():
    """`RETRY-AFTER` is `Retry-After`."""
    assert parse_retry_after(CIMultiDict({"RETRY-AFTER": "4"}), NOW) == 4.0


@pytest.mark.parametrize("ahead", [0, 1, 30, 3600])
def test_retry_after_http_date(ahead):
    """An HTTP date means the time left until then, by the given wall clock."""
    date = email.utils.format_datetime(datetime.fromtimestamp(NOW + ahead, UTC), usegmt=True)
    assert parse_retry_after(headers(retry_after=date), NOW) == pytest.approx(ahead, abs=1)


def test_retry_after_date_in_the_past_means_now():
    """A date already gone waits zero, never a negative time."""
    date = email.utils.format_datetime(datetime.fromtimestamp(NOW - 600, UTC), usegmt=True)
    assert parse_retry_after(headers(retry_after=date), NOW) == 0.0


@pytest.mark.parametrize(
    "value", ["", "soon", "-1", "inf", "nan", "-inf", "1e999", "Mon, 99 Foo 2024", "1,5"]
)
def test_unreadable_retry_after_is_none(value):
    """Garbage, negatives and infinities give None, so the caller backs off on its own."""
    assert parse_retry_after(headers(retry_after=value), NOW) is None


@pytest.mark.parametrize("value", ["-1", "inf", "nan", "x"])
def test_unreadable_retry_after_ms_alone_is_none(value):
    """A bad `retry-after-ms` without `Retry-After` gives None."""
    assert parse_retry_after(headers(retry_after_ms=value), NOW) is None


def test_no_retry_after_is_none():
    """No header, no wait from the server."""
    assert parse_retry_after(CIMultiDict(), NOW) is None


@given(seconds=st.integers(0, 10**6))
def test_any_whole_seconds_value_round_trips(seconds):
    """Every non-negative integer of seconds is read back as itself."""
    assert parse_retry_after(headers(retry_after=str(seconds)), NOW) == float(seconds)
