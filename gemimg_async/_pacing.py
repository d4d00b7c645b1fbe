"""Time slicing for the CPU work of streamed answers, so the event loop is never held long.

Decoding a chunk of base64 and handing it to a file costs about a millisecond on the loop. With
many answers streaming at once, every loop iteration would run one step of each: sixteen 4K
answers would hold the loop for tens of milliseconds at a time, and every other handler of a web
backend sharing it would wait. A client's streams instead share one budget per loop iteration:
a chunk is handed on while the current iteration has run less than `SLICE_BUDGET` of them, and
otherwise waits for the next iteration, after the loop has looked at its timers and sockets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import attrs

__all__ = ["SLICE_BUDGET", "Pacer"]

SLICE_BUDGET = 0.002
"""Seconds of streamed work per event-loop iteration, across all of a client's answers."""


@attrs.define
class Pacer:
    """One client's budget of streamed work per iteration of the loop it runs on."""

    budget: float = SLICE_BUDGET
    _started: float | None = None
    """When the current iteration's first slice began; None until one does."""

    async def turn(self) -> None:
        """Return when the current iteration may run one more slice, or in a later one."""
        while True:
            now = time.perf_counter()
            if self._started is None:
                self._started = now
                asyncio.get_running_loop().call_soon(self._next_iteration)
                return
            if now - self._started < self.budget:
                return
            await asyncio.sleep(0)

    def _next_iteration(self) -> None:
        # call_soon from within an iteration runs at the start of the next one
        self._started = None

    async def paced(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`chunks`, each handed on when the budget allows."""
        async for chunk in chunks:
            await self.turn()
            yield chunk
