"""`Client.map` (`_fanout`): pulling lazily from its source, its workers and the pool, ordered
output, and closing under it; end to end against the fake relay.
"""

import asyncio
import contextlib
import os
from collections.abc import Iterator

import anyio
import pytest

import gemimg_async as gi
from gemimg_async import Client, ClientClosedError, ImageRequest
from gemimg_async.testing import FakeClock, Fault
from helpers import API_KEY, STANDARD, TIER_2K, free_port, prompts_sent, slow_client, wait_for

pytestmark = pytest.mark.anyio


class Counted:
    """`count` prompts made as they are pulled, and how many have been."""

    def __init__(self, count: int, prefix: str) -> None:
        self.count, self.prefix, self.pulled = count, prefix, 0

    def prompts(self) -> Iterator[ImageRequest]:
        for i in range(self.count):
            self.pulled += 1
            yield ImageRequest(f"{self.prefix}{i}")


def map_worker_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "FanOut._worker"]


# --- pulling and ordering ----------------------------------------------------------------------


async def test_map_pulls_a_huge_generator_lazily_with_bounded_tasks(relay, client):
    """100,000 queued prompts: map pulls only what the pool can send, and the number of live
    tasks stays small; leaving the loop ends them all.

    Running all 100,000 over HTTP would take minutes of CI, so 2,000 are consumed: what matters
    is that nothing grows with the input's length.
    """
    source = Counted(100_000, "prompt ")

    max_concurrency = client.stats.max_concurrency
    before = len(asyncio.all_tasks())
    consumed = most_tasks = 0
    async with contextlib.aclosing(client.map(source.prompts())) as outcomes:
        async for outcome in outcomes:
            assert outcome.ok
            consumed += 1
            assert source.pulled <= consumed + 2 * max_concurrency
            assert len(map_worker_tasks()) == max_concurrency
            most_tasks = max(most_tasks, len(asyncio.all_tasks()))
            if consumed == 2_000:
                break
    assert source.pulled <= consumed + 2 * max_concurrency
    assert most_tasks <= before + 3 * max_concurrency  # workers, and the relay's connections
    assert map_worker_tasks() == []
    await wait_for(lambda: relay.in_flight == 0)
    await anyio.sleep(0.05)  # the relay's side of the cancelled requests winds down
    assert len(asyncio.all_tasks()) <= before + 2 * max_concurrency  # the relay's connections


async def test_map_ordered_yields_in_input_order(relay, client):
    """ordered=True yields outcomes in input order though they finish out of order."""
    relay.script(Fault.delay(0.3), Fault.delay(0.2), Fault.delay(0.1))
    requests = [ImageRequest(f"p{i}", id=f"r{i}") for i in range(12)]
    outcomes = [outcome async for outcome in client.map(requests, ordered=True)]
    assert [outcome.index for outcome in outcomes] == list(range(12))
    assert [outcome.request.id for outcome in outcomes] == [f"r{i}" for i in range(12)]
    unordered = [outcome async for outcome in client.map(requests)]
    assert sorted(outcome.index for outcome in unordered) == list(range(12))


async def test_map_goes_on_after_one_request_fails(relay, clock):
    """One request's error is its outcome; the others are generated all the same."""
    relay.script(Fault.delay(0), Fault.status(400), Fault.delay(0))
    async with Client(API_KEY, relay.url, max_concurrency=1, clock=clock) as client:
        outcomes = [o async for o in client.map([ImageRequest(f"p{i}") for i in range(4)])]
    assert [outcome.ok for outcome in outcomes] == [True, False, True, True]
    assert type(outcomes[1].error).__name__ == "BadRequestError"


async def test_leaving_map_early_cancels_what_is_in_flight():
    """Breaking out of map (closed with aclosing) cancels the requests still in flight."""
    async with slow_client(0.0, 4) as (relay, client):
        relay.latency = {STANDARD: 30.0, TIER_2K: 0.0}
        requests = [
            ImageRequest("fast", model="2k"),
            *(ImageRequest(f"slow {i}") for i in range(9)),
        ]
        with anyio.fail_after(5):
            async with contextlib.aclosing(client.map(requests)) as outcomes:
                async for outcome in outcomes:
                    assert outcome.request.prompt == "fast"
                    break
        assert map_worker_tasks() == []
        assert client.stats.in_flight == 0
    assert len(relay.requests) <= 5  # the pool's worth, and at most one pulled as "fast" ended


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("max_concurrency", [1, 3])
async def test_a_worker_pulls_again_only_once_the_caller_has_seen_its_outcome(
    relay, ordered, max_concurrency
):
    """With one place, the caller's loop body sees each outcome before the next request is
    pulled (a batch that stops on a failing outcome sends nothing after it); with more, at most
    twice the pool's worth, less one, is pulled beyond what the caller has seen."""
    source = Counted(12, "p")

    window = 2 * max_concurrency - 1
    async with Client(API_KEY, relay.url, max_concurrency=max_concurrency) as client:
        seen = 0
        async for _ in client.map(source.prompts(), ordered=ordered):
            assert (
                source.pulled <= seen + window
            )  # the one being seen is handed on, its room not used
            if max_concurrency == 1:
                assert source.pulled == seen + 1
            seen += 1
            for _ in range(3):
                await asyncio.sleep(0)  # what runs beside the caller may go on meanwhile
    assert (seen, source.pulled) == (12, 12)


@pytest.mark.parametrize("ordered", [False, True])
async def test_a_slow_consumer_holds_back_the_workers(relay, ordered):
    """Outcomes hold images: while the caller dwells on one, the pool goes on, but no more
    requests are sent than twice the pool's worth, less one, of outcomes can wait for it."""
    source = Counted(20, "p")

    window = 5
    async with Client(API_KEY, relay.url, max_concurrency=3) as client:
        outcomes = []
        async with contextlib.aclosing(client.map(source.prompts(), ordered=ordered)) as results:
            async for outcome in results:
                outcomes.append(outcome)
                if len(outcomes) == 1:
                    await wait_for(lambda: len(relay.requests) > window and not relay.in_flight)
                    await anyio.sleep(0.2)  # what would be sent beyond the window is
                    assert source.pulled == len(relay.requests) == 1 + window
    assert sorted(outcome.index for outcome in outcomes) == list(range(20))
    assert all(outcome.ok for outcome in outcomes)


@pytest.mark.parametrize("ordered", [False, True])
async def test_nothing_is_pulled_while_a_failed_outcome_waits_for_the_caller(relay, ordered):
    """A failure holds the workers back until the caller has seen it (a caller that stops on
    it sends nothing more than what was running); then the pool goes on."""
    relay.latency = {TIER_2K: 0.3}
    relay.script(Fault.status(400))  # the first request, answered at once
    pulled = 0

    def requests() -> Iterator[ImageRequest]:
        nonlocal pulled
        for i in range(8):
            pulled += 1
            yield ImageRequest(f"p{i}", model="standard" if i == 0 else "2k")

    async with Client(API_KEY, relay.url, max_concurrency=3) as client:
        seen = []
        async for outcome in client.map(requests(), ordered=ordered):
            if not seen:
                assert outcome.request.prompt == "p0"
                assert not outcome.ok
                assert pulled == 3  # its worker did not pull the next one before this
            seen.append(outcome)
    assert len(seen) == pulled == 8
    assert sum(outcome.ok for outcome in seen) == 7


async def test_map_waits_for_its_places_whatever_the_pool_timeout(relay):
    """A map pulls a request and waits for its place however long it takes: the client's
    pool_timeout (0 here) is for single calls, and no request is dropped for it."""
    relay.latency = {STANDARD: 0.0, TIER_2K: 0.3}
    try:
        async with (
            Client(API_KEY, relay.url, max_concurrency=1, pool_timeout=0) as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(client.generate_2k, "holds the one place")
            await wait_for(lambda: relay.in_flight == 1)
            with anyio.fail_after(10):
                requests = [ImageRequest(f"p{i}") for i in range(3)]
                outcomes = [outcome async for outcome in client.map(requests)]
        assert [outcome.ok for outcome in outcomes] == [True] * 3
    finally:
        relay.latency = 0.0


async def test_a_failing_worker_ends_the_map_with_its_error(relay):
    """A failure of the map's own (a shared limiter that cannot be reached, told to fail) is
    raised by the map once what runs has ended, not passed off as the client being closed."""
    limiter = gi.RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", on_unreachable="fail")
    try:
        async with Client(API_KEY, relay.url, limiter=limiter, max_concurrency=2) as client:
            with pytest.raises(gi.LimiterUnavailableError, match="nothing was sent"):
                async for _ in client.map([ImageRequest(f"p{i}") for i in range(4)]):
                    pass
            assert map_worker_tasks() == []
    finally:
        await limiter.aclose()
    assert relay.requests == []


# --- places and rate ---------------------------------------------------------------------------


async def test_an_idle_map_holds_no_place_in_the_pool(relay):
    """A map waiting on a slow source holds no place: generate() beside it goes straight out."""
    async with Client(API_KEY, relay.url, clock=FakeClock(), max_concurrency=2) as client:
        go = anyio.Event()

        async def slow_source():
            await go.wait()
            yield gi.ImageRequest("at last")

        async def drain():
            async for _ in client.map(slow_source()):
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            await anyio.sleep(0.05)
            assert client.stats.in_flight == 0
            with anyio.fail_after(5):
                await client.generate("not kept waiting")
            go.set()
    assert [r.prompt for r in relay.requests] == ["not kept waiting", "at last"]


async def test_map_under_rpm_spends_no_rate_on_an_empty_source(relay):
    """Two requests mapped at rpm=60 wait for one start, not one per idle worker."""
    clock = FakeClock()
    async with Client(API_KEY, relay.url, clock=clock, rpm=60) as client:
        requests = [gi.ImageRequest("one"), gi.ImageRequest("two")]
        outcomes = [outcome async for outcome in client.map(requests)]
        assert all(outcome.ok for outcome in outcomes)
        assert client.stats.rate_waits == 1
    assert sum(clock.sleeps) == pytest.approx(1.0)


# --- closing the client under a map ------------------------------------------------------------


async def test_closing_the_client_under_a_running_map_raises(relay):
    """A map still iterating when its client is closed raises ClientClosedError instead of
    ending as if every request had been made."""
    relay.latency = 0.2
    try:
        client = Client(API_KEY, relay.url, clock=FakeClock(), max_concurrency=2)
        requests = (gi.ImageRequest(f"fox {i}") for i in range(10))
        seen = []

        async def consume() -> None:
            async for outcome in client.map(requests):
                seen.append(outcome)
                await client.aclose()

        with pytest.raises(ClientClosedError):
            await consume()
        assert 1 <= len(seen) <= 2  # and what had ended when it closed: nothing pulled after
    finally:
        relay.latency = 0.0


async def test_outcomes_ended_when_the_client_closes_are_still_yielded(relay):
    """Closing the client under a map: what had already ended (paid for) is yielded before
    ClientClosedError; nothing is pulled after the close."""
    finished = 0

    def hear(event: gi.Event) -> None:
        nonlocal finished
        finished += isinstance(event, gi.GenerationFinished)

    async with Client(API_KEY, relay.url, max_concurrency=2, clock=FakeClock()) as client:
        requests = (ImageRequest(f"fox {i}") for i in range(10))
        seen, ended = [], 0

        async def consume() -> None:
            nonlocal ended
            async for outcome in client.map(requests, on_event=hear):
                seen.append(outcome)
                if len(seen) == 1:
                    await wait_for(lambda: finished >= 2)
                    ended = finished
                    await anyio.sleep(0.05)  # the worker hands its outcome over
                    await client.aclose()

        with pytest.raises(ClientClosedError):
            await consume()
        assert len(seen) >= ended >= 2
        assert len(relay.requests) <= 1 + 3  # the one seen, and the window: 2 places' worth, less 1


async def test_an_ordered_map_yields_what_it_held_when_the_client_closes():
    """Ordered, outcomes held behind a request the close cut short are yielded (in input
    order, without it) before ClientClosedError: they are paid for."""
    finished = 0

    def hear(event: gi.Event) -> None:
        nonlocal finished
        finished += isinstance(event, gi.GenerationFinished)

    async with slow_client(0.0, 2) as (relay, client):
        relay.latency = {STANDARD: 30.0, TIER_2K: 0.0}
        requests = [
            ImageRequest("slow"),
            *(ImageRequest(f"fast {i}", model="2k") for i in range(5)),
        ]
        seen = []

        async def close_once_two_ended() -> None:
            await wait_for(lambda: finished >= 2)
            await anyio.sleep(0.05)  # the workers hand their outcomes over
            await client.aclose()

        async def drain() -> None:
            async for outcome in client.map(requests, ordered=True, on_event=hear):
                seen.append(outcome.index)  # noqa: PERF401 - kept as they come, up to the error

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(close_once_two_ended)
                with pytest.raises(ClientClosedError):
                    await drain()
        assert len(seen) >= 2
        assert seen == sorted(seen)
        assert 0 not in seen


async def test_map_refuses_a_taken_name_before_paying(relay, client, tmp_path):
    """An image file already in the folder under a request's name: that request fails with
    FileExistsError unsent, the others are made and saved."""
    (tmp_path / "fox_0.webp").write_bytes(b"an older fox")
    requests = [ImageRequest("a fox", id="fox"), ImageRequest("a hen", id="hen")]
    outcomes = {o.request.id: o async for o in client.map(requests, save_to=tmp_path)}
    assert isinstance(outcomes["fox"].error, FileExistsError)
    assert "fox_0.webp" in str(outcomes["fox"].error)
    assert outcomes["hen"].ok
    assert prompts_sent(relay) == ["a hen"]
    assert (tmp_path / "fox_0.webp").read_bytes() == b"an older fox"


async def test_a_second_request_with_the_same_id_in_one_map_is_refused_before_paying(
    relay, client, tmp_path
):
    """Two requests of one map with the same id, in flight together: the second is refused
    before it is sent (it would have been paid for, then saved under a spare name)."""
    requests = [ImageRequest("twin one", id="twin"), ImageRequest("twin two", id="twin")]
    outcomes = [o async for o in client.map(requests, save_to=tmp_path, ordered=True)]
    assert outcomes[0].ok
    assert isinstance(outcomes[1].error, FileExistsError)
    assert relay.generation_count == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["twin_0.png"]


async def test_a_folder_that_cannot_be_listed_is_asked_name_by_name(
    relay, client, tmp_path, monkeypatch
):
    """A folder the map may write in but not list (no read permission): each request's names
    are looked up on disk instead; a taken one is still refused before paying."""
    (tmp_path / "fox_0.png").write_bytes(b"an older fox")
    real_scandir = os.scandir

    def unreadable(path="."):
        if os.fspath(path) == os.fspath(tmp_path):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", unreadable)
    requests = [ImageRequest("a fox", id="fox"), ImageRequest("a hen", id="hen")]
    outcomes = {o.request.id: o async for o in client.map(requests, save_to=tmp_path)}
    assert isinstance(outcomes["fox"].error, FileExistsError)
    assert outcomes["hen"].ok
    assert prompts_sent(relay) == ["a hen"]
