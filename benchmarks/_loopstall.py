"""How long the event loop was blocked at once: what every other task sharing it feels.

`StallProbe` runs a task that sleeps `interval` seconds in a loop and records how late each
wake-up is. A loop that is never blocked wakes it within a fraction of a millisecond; a callback
that holds the loop for 300 ms makes one wake-up 300 ms late.

A wake-up can also be late because the operating system gave the loop's thread no CPU: on a
busy two-core machine (the relay, the client's threads, other processes) that alone can reach
tens of milliseconds. On Linux the probe reads the thread's run-queue wait from
``/proc/thread-self/schedstat`` around every sleep, so each stall splits into the part the
process caused (running Python, waiting for the GIL or a system call) and the part spent waiting
for a CPU. Standard library only, so that a benchmark worker imports nothing its peer does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Self

__all__ = ["DEFAULT_INTERVAL", "DEFAULT_THRESHOLD", "Stall", "StallProbe"]

DEFAULT_INTERVAL = 0.005
"""Seconds the probe sleeps between wake-ups."""
DEFAULT_THRESHOLD = 0.020
"""A wake-up later than this counts (and is kept) as a stall."""
_SCHEDSTAT = "/proc/thread-self/schedstat"
_NS = 1e-9


class Stall:
    """One wake-up later than the threshold."""

    __slots__ = ("at", "cpu_wait", "late")

    def __init__(self, at: float, late: float, cpu_wait: float) -> None:
        self.at = at
        """Seconds since the probe started, when the sleep began."""
        self.late = late
        """Seconds the wake-up came after it was due."""
        self.cpu_wait = cpu_wait
        """Seconds of the sleep the loop's thread spent runnable but without a CPU (Linux)."""

    @property
    def own(self) -> float:
        """`late` less the wait for a CPU: what the process itself held the loop for."""
        return max(self.late - self.cpu_wait, 0.0)

    def __repr__(self) -> str:
        return (
            f"Stall(at={self.at:.3f}, late={self.late * 1000:.1f} ms, "
            f"cpu_wait={self.cpu_wait * 1000:.1f} ms)"
        )


class StallProbe:
    """`async with StallProbe() as probe:` ... then read `probe.worst` (seconds)."""

    def __init__(
        self, interval: float = DEFAULT_INTERVAL, threshold: float = DEFAULT_THRESHOLD
    ) -> None:
        self.interval = interval
        self.threshold = threshold
        self.worst = 0.0
        """The latest wake-up, in seconds after it was due."""
        self.worst_own = 0.0
        """The latest wake-up less the time the thread waited for a CPU meanwhile (Linux; else
        the same as `worst`)."""
        self.wakeups = 0
        self.stalls: list[Stall] = []
        """Every wake-up later than `threshold`, in order."""
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)  # let the probe take its first reading before the work starts
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        with _cpu_wait_clock() as cpu_wait:  # opened here: on the loop's own thread
            start = loop.time()
            while True:
                began, waited = loop.time(), cpu_wait()
                await asyncio.sleep(self.interval)
                late = loop.time() - began - self.interval
                stall = Stall(began - start, late, min(cpu_wait() - waited, max(late, 0.0)))
                self.wakeups += 1
                self.worst = max(self.worst, late)
                self.worst_own = max(self.worst_own, stall.own)
                if late > self.threshold:
                    self.stalls.append(stall)


@contextlib.contextmanager
def _cpu_wait_clock() -> Iterator[Callable[[], float]]:
    """A clock of the seconds the calling thread has spent waiting for a CPU; 0 if unknown."""
    try:
        fd = os.open(_SCHEDSTAT, os.O_RDONLY)
    except OSError:
        yield lambda: 0.0
        return

    def waited() -> float:
        return int(os.pread(fd, 128, 0).split()[1]) * _NS

    try:
        yield waited
    finally:
        os.close(fd)
