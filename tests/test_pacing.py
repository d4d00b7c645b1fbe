"""The pacer (`_pacing`): streamed work shares one budget per loop iteration, in FIFO order, and
a waiting chunk wakes its task about once however many answers are in flight. Time is a fake
clock that only the slices move, so nothing here depends on the machine's speed."""

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from gemimg_async._pacing import SLICE_BUDGET, Pacer

pytestmark = pytest.mark.anyio

SLICE = SLICE_BUDGET / 4
"""What one chunk's work costs on the fake clock: four fit in a budget."""


class Work:
    """A fake clock moved only by slices of work, and a probe of how long the loop was held."""

    def __init__(self, *, uneven: bool = False) -> None:
        self.uneven = random.Random(22) if uneven else None  # noqa: S311 - fake costs
        self.now = 0.0
        self.longest_hold = 0.0
        self._last_probe = 0.0
        self._probing = True

    def clock(self) -> float:
        return self.now

    def slice(self) -> None:
        self.now += SLICE if self.uneven is None else self.uneven.uniform(SLICE / 10, 2 * SLICE)

    def start_probe(self) -> None:
        """A callback that runs once per loop iteration, as every other handler would."""
        loop = asyncio.get_running_loop()

        def probe() -> None:
            self.longest_hold = max(self.longest_hold, self.now - self._last_probe)
            self._last_probe = self.now
            if self._probing:
                loop.call_soon(probe)

        loop.call_soon(probe)

    def stop_probe(self) -> None:
        self._probing = False


async def chunks(count: int) -> AsyncIterator[bytes]:
    """`count` chunks that are all there at once, as a fast body's are."""
    for _ in range(count):
        yield b"x"


async def stream(pacer: Pacer, work: Work, count: int, order: list[int], name: int) -> None:
    async for _ in pacer.paced(chunks(count)):
        order.append(name)
        work.slice()


async def run_streams(pacer: Pacer, work: Work, streams: int, count: int) -> list[int]:
    order: list[int] = []
    work.start_probe()
    try:
        await asyncio.gather(*(stream(pacer, work, count, order, n) for n in range(streams)))
    finally:
        work.stop_probe()
    return order


async def test_chunks_within_the_budget_never_wait():
    """One stream's chunks that fit the iteration's budget run at once."""
    work = Work()
    pacer = Pacer(clock=work.clock)
    order = await run_streams(pacer, work, streams=1, count=3)
    assert order == [0, 0, 0]
    assert pacer.waits == 0


async def test_an_iteration_holds_the_loop_for_the_budget_and_one_slice_at_most():
    """Sixteen streams of slices share one budget per iteration: the loop is never held longer
    than the budget plus the slice that began within it (unpaced, 16 slices at once)."""
    work = Work()
    pacer = Pacer(clock=work.clock)
    order = await run_streams(pacer, work, streams=16, count=10)
    assert len(order) == 160
    assert work.longest_hold <= SLICE_BUDGET + SLICE
    assert pacer.waits > 0


@pytest.mark.parametrize("streams", [16, 256, 1024])
@pytest.mark.parametrize("uneven", [False, True])
async def test_a_waiting_chunk_wakes_its_task_about_once(streams, uneven):
    """Wake-ups per chunk stay O(1) whatever is in flight, with slices of one cost or of costs
    that vary twentyfold (a sleep(0) poll wakes every waiter every iteration: hundreds of times
    per chunk at 1,024 in flight)."""
    work = Work(uneven=uneven)
    pacer = Pacer(clock=work.clock)
    await run_streams(pacer, work, streams=streams, count=3)
    assert pacer.waits > streams
    assert pacer.wakeups <= (1.5 if uneven else 1.1) * pacer.waits
    assert work.longest_hold <= SLICE_BUDGET + 2 * SLICE


async def test_waiters_are_released_in_the_order_they_came():
    """Chunks that wait run first come, first served."""
    work = Work()
    pacer = Pacer(clock=work.clock)
    order = await run_streams(pacer, work, streams=64, count=1)
    assert order == list(range(64))


async def test_a_stream_whose_turn_came_goes_on_while_the_budget_lasts():
    """A stream given a turn runs the chunks it already has up to the budget, rather than one
    and back of the queue: fewer answers are half-read at once, each holding its buffers."""
    work = Work()
    pacer = Pacer(clock=work.clock)
    order = await run_streams(pacer, work, streams=3, count=4)
    assert order == [0] * 4 + [1] * 4 + [2] * 4


async def test_a_cancelled_waiter_holds_nobody_up():
    """Cancelling a stream while it waits lets every other stream finish, and leaves no waiter
    counted."""
    work = Work()
    pacer = Pacer(clock=work.clock)
    order: list[int] = []
    tasks = [asyncio.create_task(stream(pacer, work, 3, order, n)) for n in range(12)]
    for _ in range(100):
        if pacer.waits >= 4:
            break
        await asyncio.sleep(0)
    tasks[5].cancel()
    tasks[6].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [isinstance(result, asyncio.CancelledError) for result in results].count(True) == 2
    assert sorted(set(order)) == [n for n in range(12) if n not in (5, 6)]
    assert pacer._turns is not None
    assert pacer._turns.waiting == 0


def test_a_pacer_serves_a_new_loop_after_the_last_one_ends():
    """A pacer (a client's) works in a second asyncio.run after the first loop has closed."""
    work = Work()
    pacer = Pacer(clock=work.clock)
    for _ in range(2):
        order = asyncio.run(run_streams(pacer, work, streams=8, count=4))
        assert len(order) == 32
