"""A fake relay on an event loop of its own, in a thread: for synchronous code, and for tests
whatever async plugin (anyio's, pytest-asyncio) runs them and whichever loop they run on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ._relay import FakeRelay

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["RelayThread"]

_T = TypeVar("_T")
_START_TIMEOUT = 30.0
_FIXED = frozenset({"host", "port", "ssl", "url_ttl"})
"""Settings a reset keeps: where the relay listens and how its file host was made."""


@attrs.define
class RelayThread:
    """``with RelayThread(FakeRelay()) as relay:`` — the relay answers from a daemon thread
    until the block ends. `reset()` forgets scripts and records and puts back the settings it
    started with (`latency`, `image_style`...), as a test that changed them expects."""

    relay: FakeRelay = attrs.Factory(FakeRelay)
    _defaults: dict[str, Any] = attrs.field(init=False, factory=dict)
    _thread: threading.Thread | None = attrs.field(init=False, default=None)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(init=False, default=None)
    _stop: asyncio.Event | None = attrs.field(init=False, default=None)

    def start(self) -> FakeRelay:
        """Start the thread and the relay in it; return the relay, answering."""
        if self._thread is not None:
            raise RuntimeError("the relay thread is already started")
        self._defaults = {
            field.name: getattr(self.relay, field.name)
            for field in attrs.fields(type(self.relay))
            if field.init and field.name not in _FIXED
        }
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(started),), name="gemimg-fake-relay", daemon=True
        )
        self._thread.start()
        started.result(timeout=_START_TIMEOUT)  # raises what starting raised
        return self.relay

    async def _serve(self, started: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.relay.start()
        except BaseException as error:
            started.set_exception(error)
            raise
        started.set_result(None)
        try:
            await self._stop.wait()
        finally:
            await self.relay.aclose()

    def call(self, function: Callable[[], _T]) -> _T:
        """Run `function` on the relay's loop, between its requests; return what it returns."""
        if self._loop is None:
            raise RuntimeError("the relay thread is not started")

        async def run() -> _T:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(_START_TIMEOUT)

    def reset(self) -> FakeRelay:
        """`FakeRelay.reset()`, and the settings the relay started with put back."""

        def reset() -> None:
            self.relay.reset()
            for name, value in self._defaults.items():
                setattr(self.relay, name, value)

        self.call(reset)
        return self.relay

    def stop(self) -> None:
        """Stop the relay and its thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        thread.join(_START_TIMEOUT)
        self._thread = self._loop = self._stop = None

    def __enter__(self) -> FakeRelay:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
