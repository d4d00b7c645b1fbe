"""The limiter interface (`_limiter`): endpoint keys, the local rate, and `LocalLimiter`, the
in-process stand-in for the Redis limiter, all without a server and without real waits."""

import anyio
import anyio.lowlevel
import pytest

from gemimg_async import ClientClosedError, ConfigurationError
from gemimg_async._limiter import (
    Lease,
    LocalLimiter,
    LocalRate,
    SharedLimiter,
    check_limits,
    endpoint_key,
)
from gemimg_async.testing import FakeClock
from helpers import SECRET

pytestmark = pytest.mark.anyio


# --- endpoint_key --------------------------------------------------------------------------------


def test_endpoint_key_hides_the_key_and_the_url():
    """The key of an endpoint is a digest: neither its API key nor its URL shows in it."""
    key = endpoint_key("https://relay.example/v1", SECRET)
    assert SECRET not in key
    assert "relay.example" not in key
    assert len(key) == 32
    assert all(c in "0123456789abcdef" for c in key)


def test_endpoint_key_names_one_endpoint():
    """Same relay and key: same limiter key (a trailing slash aside); another of either: not."""
    key = endpoint_key("https://relay.example/v1", "sk-a")
    assert endpoint_key("https://relay.example/v1/", "sk-a") == key
    assert endpoint_key("https://relay.example/v1", "sk-b") != key
    assert endpoint_key("https://other.example/v1", "sk-a") != key


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_concurrency": 0}, "at least 1"),
        ({"max_concurrency": 2.5}, "whole number"),
        ({"max_concurrency": True}, "whole number"),
        ({"rpm": 0}, "above 0"),
        ({"rpm": float("inf")}, "above 0"),
        ({"rpm": "60"}, "above 0"),
    ],
)
def test_limits_no_limiter_can_keep_are_refused(limits, message):
    """Zero places, a fractional place or a rate that is not a positive number: refused."""
    with pytest.raises(ConfigurationError, match=message):
        check_limits(**limits)


# --- LocalRate -------------------------------------------------------------------------------


def test_starts_are_reserved_one_interval_apart():
    """A bucket of one: the first start goes at once, each next one 60/rpm seconds later."""
    rate = LocalRate(FakeClock())
    assert [rate.reserve("k", 120) for _ in range(4)] == [0.0, 0.5, 1.0, 1.5]


def test_a_burst_goes_at_once_then_the_rate_holds():
    """A bucket of three: three starts at once, then one per interval."""
    rate = LocalRate(FakeClock(), burst=3)
    assert [rate.reserve("k", 60) for _ in range(5)] == [0.0, 0.0, 0.0, 1.0, 2.0]


def test_a_quiet_spell_refills_the_bucket_but_no_more():
    """After a pause the burst is available again, never more than its size."""
    clock = FakeClock()
    rate = LocalRate(clock, burst=2)
    assert [rate.reserve("k", 60) for _ in range(3)] == [0.0, 0.0, 1.0]
    clock.now += 60
    assert [rate.reserve("k", 60) for _ in range(3)] == [0.0, 0.0, 1.0]


def test_each_key_has_its_own_rate():
    """Two endpoints do not share starts."""
    rate = LocalRate(FakeClock())
    assert [rate.reserve("a", 60), rate.reserve("b", 60), rate.reserve("a", 60)] == [0, 0, 1]


# --- LocalLimiter ----------------------------------------------------------------------------


def test_local_limiter_is_a_shared_limiter():
    """The stand-in answers to the protocol the pool will call."""
    assert isinstance(LocalLimiter(), SharedLimiter)


async def test_no_more_than_max_concurrency_leases_at_once():
    """The places of a key are never more than asked; a release lets the next waiter in."""
    limiter = LocalLimiter()
    most = now = 0

    async def work() -> None:
        nonlocal most, now
        lease = await limiter.acquire("k", 3)
        now += 1
        most = max(most, now)
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()
        now -= 1
        await limiter.release(lease)

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(work)
    assert (most, limiter.held("k")) == (3, 0)
    assert limiter.waits > 0


async def test_waiters_are_served_in_the_order_they_came():
    """FIFO: the first to wait gets the next place."""
    limiter = LocalLimiter()
    first = await limiter.acquire("k", 1)
    order = []

    async def wait(name: str) -> None:
        lease = await limiter.acquire("k", 1)
        order.append(name)
        await limiter.release(lease)

    async with anyio.create_task_group() as group:
        for name in "abc":
            group.start_soon(wait, name)
            await anyio.lowlevel.checkpoint()
        await limiter.release(first)
    assert order == ["a", "b", "c"]


async def test_a_cancelled_acquire_leaks_no_place():
    """A waiter given up on takes nothing: the place goes to the next one."""
    limiter = LocalLimiter()
    first = await limiter.acquire("k", 1)
    with anyio.move_on_after(0.01):
        await limiter.acquire("k", 1)
    await limiter.release(first)
    assert limiter.held("k") == 0
    with anyio.fail_after(5):
        await limiter.release(await limiter.acquire("k", 1))


async def test_a_second_release_is_a_no_op():
    """Releasing twice gives one place back, not two."""
    limiter = LocalLimiter()
    lease = await limiter.acquire("k", 2)
    other = await limiter.acquire("k", 2)
    await limiter.release(lease)
    await limiter.release(lease)
    assert limiter.held("k") == 1
    await limiter.release(other)
    await limiter.release(Lease("never", "seen"))


async def test_local_starts_wait_for_the_rate():
    """`start` sleeps (on the injected clock) until the start it reserved."""
    clock = FakeClock()
    limiter = LocalLimiter(clock)
    for _ in range(3):
        await limiter.start("k", 30)
    assert clock.sleeps == [2.0, 2.0]


async def test_a_closed_local_limiter_refuses_and_wakes_its_waiters():
    """After aclose, waiting and new calls raise ClientClosedError."""
    limiter = LocalLimiter()
    await limiter.acquire("k", 1)
    failed = []

    async def wait() -> None:
        with pytest.raises(ClientClosedError):
            await limiter.acquire("k", 1)
        failed.append(True)

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await anyio.lowlevel.checkpoint()
        await limiter.aclose()
    assert failed == [True]
    with pytest.raises(ClientClosedError):
        await limiter.start("k", 60)
