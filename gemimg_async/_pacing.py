"""Time slicing for the CPU work of streamed answers, so the event loop is never held long.

Decoding a chunk of base64 and handing it to a file costs about a millisecond on the loop. With
many answers streaming at once, every loop iteration would run one step of each: sixteen 4K
answers would hold the loop for tens of milliseconds at a time, and every other handler of a web
backend sharing it would wait. A client's streams instead share one budget per loop iteration:
a chunk is handed on while the current iteration has run less than `SLICE_BUDGET` of them, and
otherwise waits for a later iteration, after the loop has looked at its timers and sockets.

The cost is O(1) per chunk however many answers are in flight. While nobody waits, a chunk costs
a clock read. A chunk that finds the budget spent (or others waiting) parks on a future in a FIFO
queue; a callback that runs once per loop iteration while anyone waits opens the next
iteration's budget and releases the queue's head, as many waiters as had turns last time (more
when they all fitted with time to spare). A released waiter that still finds the budget spent
parks again at the head, so the budget bounds each iteration however far the estimate is off.
A stream whose turn came goes on with the chunks it already has while the budget lasts, then
queues again. Each waiting chunk wakes its task about once; the earlier design polled with
`sleep(0)`, waking every waiter every iteration (333 wake-ups per request at 1,024 in flight).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable

import attrs

__all__ = ["SLICE_BUDGET", "Pacer"]

SLICE_BUDGET = 0.002
"""Seconds of streamed work per event-loop iteration, across all of a client's answers."""
_MAX_RELEASE = 4096
"""The most waiters one iteration releases, however well the last ones fitted."""


@attrs.define(eq=False)
class _Turns:
    """The budget and the queue of one event loop: a Pacer starts a fresh one on another loop
    (a task of a finished loop still holds its own, and leaves the new one alone)."""

    loop: asyncio.AbstractEventLoop
    budget: float
    clock: Callable[[], float]
    started: float | None = None
    """When the current iteration's first slice began; None until one does."""
    granted: int = 0
    """Slices begun since `started`."""
    spent: bool = False
    """A slice was refused since `started`: the budget ran out."""
    release: int = 1
    """How many waiters the next iteration releases."""
    waiting: int = 0
    """Tasks in `wait`: parked, or released and not yet running."""
    ticking: bool = False
    """`tick` is scheduled on the loop."""
    front: int = 0
    """Where the next waiter that parks again goes in the queue (they keep their order)."""
    iteration: int = 0
    """Counts the iterations with slices in them (a tick follows each): a stream that began a
    slice in this one holds its turn while the budget lasts."""
    queue: collections.deque[asyncio.Future[None]] = attrs.Factory(collections.deque)
    waits: int = 0
    """Chunks that found the budget spent (or others waiting) and parked."""
    wakeups: int = 0
    """Times a parked task was resumed: about one per wait, whatever is in flight."""

    def may_go_on(self) -> bool:
        """Whether the stream that holds a turn in this iteration may run one more slice."""
        started = self.started
        return started is not None and self.clock() - started < self.budget

    def may_run(self) -> bool:
        """Whether a slice may begin now, counting it if so."""
        started = self.started
        if started is None:
            self.started = self.clock()
            self.granted = 1
            if not self.ticking:
                self.ticking = True
                self.loop.call_soon(self.tick)  # runs in the next iteration
            return True
        if self.clock() - started < self.budget:
            self.granted += 1
            return True
        self.spent = True
        return False

    async def wait(self) -> None:
        """Park until released, in FIFO order, into an iteration whose budget allows a slice."""
        self.waiting += 1
        self.waits += 1
        again = False
        try:
            while True:
                future = self.loop.create_future()
                if again:  # released, but the budget was gone: first in line next time
                    self.queue.insert(self.front, future)
                    self.front += 1
                else:
                    self.queue.append(future)
                if not self.ticking:
                    self.ticking = True
                    self.loop.call_soon(self.tick)
                try:
                    await future
                except BaseException:
                    future.cancel()  # a no-op once released: the place is simply not used
                    raise
                self.wakeups += 1
                if self.may_run():
                    return
                again = True
        finally:
            self.waiting -= 1

    def tick(self) -> None:
        """The start of a loop iteration: open its budget; release the next waiters."""
        if self.spent:  # as many as began before the budget ran out
            self.release = max(1, self.granted)
        elif self.granted and self.queue and self.started is not None:
            # every slice of the iteration ran, and more wait: release more if time was left
            used = self.clock() - self.started
            if used < self.budget / 2:
                self.release = min(2 * self.release, _MAX_RELEASE)
            elif used < self.budget:
                self.release = min(self.release + 1, _MAX_RELEASE)
        self.started, self.granted, self.spent, self.front = None, 0, False, 0
        self.iteration += 1
        if not self.queue:
            self.ticking = False
            return
        self.loop.call_soon(self.tick)  # before the released tasks: it resets their budget
        released, queue = 0, self.queue
        while released < self.release and queue:
            future = queue.popleft()
            if not future.done():  # a cancelled waiter's future is skipped
                future.set_result(None)
                released += 1


@attrs.define
class Pacer:
    """One client's budget of streamed work per iteration of the loop it runs on."""

    budget: float = SLICE_BUDGET
    clock: Callable[[], float] = attrs.field(default=time.perf_counter, repr=False)
    """Where the budget's time is read (a fake one in tests)."""
    _turns: _Turns | None = attrs.field(default=None, repr=False)

    @property
    def waits(self) -> int:
        """Chunks that had to wait for a later iteration, on the current loop."""
        return 0 if self._turns is None else self._turns.waits

    @property
    def wakeups(self) -> int:
        """Times a waiting chunk's task was resumed, on the current loop."""
        return 0 if self._turns is None else self._turns.wakeups

    def _current(self) -> _Turns:
        turns = self._turns
        if turns is None or not turns.loop.is_running():
            # first use, or the last loop has finished. Not get_running_loop() per chunk: on
            # Python 3.11 each call is a getpid system call.
            turns = _Turns(asyncio.get_running_loop(), self.budget, self.clock)
            self._turns = turns
        return turns

    async def turn(self) -> None:
        """Return when the current iteration may run one more slice, or in a later one."""
        turns = self._current()
        if turns.waiting or not turns.may_run():
            await turns.wait()

    async def paced(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`chunks`, each handed on when the budget allows.

        A stream whose turn came in this iteration goes on with the chunks already there while
        the budget lasts, before it queues again: fewer answers are half-read at once (each
        holds its buffers), and fewer tasks wake.
        """
        held = -1
        async for chunk in chunks:
            turns = self._current()
            if not (held == turns.iteration and turns.may_go_on()):
                if turns.waiting or not turns.may_run():
                    await turns.wait()
                held = turns.iteration
            yield chunk
