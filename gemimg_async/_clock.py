"""Time, injectable: every wait the client makes goes through a `Clock`, so tests need not sleep."""

from __future__ import annotations

import time
from typing import Protocol

import anyio
import attrs

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """Where the client reads time and waits."""

    def monotonic(self) -> float: ...
    def time(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


@attrs.frozen
class SystemClock:
    """The real clock: its readings are the `time` module's own functions (read several times a
    request, they cost no Python frame)."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


@attrs.define
class FakeClock:
    """A clock whose `sleep` returns at once and moves time on: retry tests take milliseconds.

    `sleeps` records every wait asked for, in order.
    """

    now: float = 1_000.0
    wall_offset: float = 1_700_000_000.0
    sleeps: list[float] = attrs.Factory(list)

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall_offset + self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        await anyio.lowlevel.checkpoint()
