"""Blocking calls run on threads of their own, their results handed back to the loop in batches.

`run_in_executor` (and `asyncio.to_thread`, `anyio.to_thread`) pays per call for a concurrent
future with its condition, an asyncio future chained to it, and a wake-up of the event loop
through its self-pipe when the call ends. At hundreds of image commits a second those wake-ups
are a large part of what saving costs the loop. `Offload` keeps one queue of calls for up to
`threads` runner threads, started when there is work and ending after `linger` seconds idle.
A finished call goes on its loop's list of results; the loop is woken once for the whole list
(`call_soon_threadsafe` only when the list was empty), so a burst of commits costs one wake-up.
At interpreter exit a commit in progress is finished, as the default executor's would be.

A cancelled caller waits for its call to end when it is running (a commit owns files, and none
changes after the call that asked for it is over), and takes it off the queue when it is not.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Offload", "in_thread"]

T = TypeVar("T")


class _Call(Generic[T]):
    """One call: what to run, and the future of the loop that waits for it."""

    __slots__ = ("args", "error", "function", "future", "loop", "result", "state", "waiter")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, function: Callable[..., T], args: tuple[Any, ...]
    ) -> None:
        self.loop, self.function, self.args = loop, function, args
        self.future: asyncio.Future[T] = loop.create_future()
        self.state = "queued"  # -> "running" (by a runner) -> "ended" (on the loop)
        self.result: T | None = None
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        """Set by a cancelled caller that waits for the running call to end."""

    def run(self) -> None:
        """On a runner thread: the call, its result or exception kept."""
        try:
            self.result = self.function(*self.args)
        except StopIteration as exc:  # a future cannot hold one
            self.error = RuntimeError(f"{self.function!r} raised StopIteration")
            self.error.__cause__ = exc
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, whatever it is
            self.error = exc
        self.args = ()  # the bytes it was given go now, not at delivery

    def end(self) -> None:
        """On the loop: the caller's future gets the outcome (unless it was cancelled)."""
        self.state = "ended"
        future, error = self.future, self.error
        if not future.done():
            if error is None:
                future.set_result(self.result)  # type: ignore[arg-type]
            else:
                future.set_exception(error)
        self.result = self.error = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class Offload:
    """Runs blocking calls on up to `threads` threads; see the module docstring."""

    def __init__(
        self, threads: int | None = None, linger: float = 1.0, name: str = "gemimg-offload"
    ) -> None:
        self.threads = threads or min(32, (os.cpu_count() or 1) + 4)
        """At most this many calls run at once (as many as the loop's default executor)."""
        self.linger = linger
        """Seconds a runner with nothing to do waits for more before it ends."""
        self.name = name
        """The runner threads' name."""
        self.wakeups = 0
        """Times a loop was woken to take results: fewer than the calls under load."""
        self._reset()
        me = weakref.ref(self)
        if hasattr(os, "register_at_fork"):  # a child has none of the parent's threads
            os.register_at_fork(after_in_child=lambda: _reset_in_child(me))
        # Runners are not daemons: the interpreter waits for a commit in progress at exit, as
        # it does for the default executor's threads; this ends the idle ones at once then.
        _at_exit = getattr(threading, "_register_atexit", None)
        if _at_exit is not None:
            _at_exit(lambda: _close_at_exit(me))

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._more = threading.Condition(self._lock)
        self._queue: collections.deque[_Call[Any]] = collections.deque()
        self._ended: dict[asyncio.AbstractEventLoop, list[_Call[Any]]] = {}
        self._runners = 0
        self._idle = 0
        self._closing = False

    async def run(self, function: Callable[..., T], /, *args: Any) -> T:
        """`function(*args)` on a runner thread; its result, or its exception raised here."""
        call = _Call(asyncio.get_running_loop(), function, args)
        with self._lock:
            self._queue.append(call)
            if self._idle:
                self._more.notify()  # an idle runner looks at the queue again in any case
            # more calls waiting than runners idle: one more runner, while there may be more
            start = len(self._queue) > self._idle and self._runners < self.threads
            if start:
                self._runners += 1
        if start:
            try:
                threading.Thread(target=self._runner, name=self.name).start()
            except BaseException:  # no thread to be had (RuntimeError)
                with self._lock:
                    self._runners -= 1
                    queued = call.state == "queued"
                    if queued:
                        self._queue.remove(call)
                if queued:  # else a runner has it: its outcome comes as usual
                    raise
        try:
            return await call.future
        except asyncio.CancelledError:
            await self._abandon(call)
            raise

    async def _abandon(self, call: _Call[Any]) -> None:
        """A cancelled caller: off the queue if not begun, else wait (once) for its end."""
        with self._lock:
            if call.state == "queued":
                self._queue.remove(call)
                call.state = "ended"
                return
        if call.state != "ended":
            call.waiter = call.loop.create_future()
            with contextlib.suppress(BaseException):  # cancelled again: stop waiting
                await call.waiter

    def _runner(self) -> None:
        lock, queue = self._lock, self._queue
        while True:
            with lock:
                while not queue:
                    if self._closing:
                        self._runners -= 1
                        return
                    self._idle += 1  # only a runner counts itself idle, and back
                    woken = self._more.wait(self.linger)
                    self._idle -= 1
                    if not woken and not queue:  # idle for `linger`: end (checked under the lock)
                        self._runners -= 1
                        return
                call = queue.popleft()
                call.state = "running"
            call.run()
            self._hand_back(call)

    def _close(self) -> None:
        """At interpreter exit: idle runners end now; busy ones finish what is queued first."""
        with self._lock:
            self._closing = True
            self._more.notify_all()

    def _hand_back(self, call: _Call[Any]) -> None:
        """Put `call` on its loop's list of ended calls; wake the loop if the list was empty."""
        loop = call.loop
        with self._lock:
            ended = self._ended.get(loop)
            if ended is not None:
                ended.append(call)  # the wake-up already asked for takes it too
                return
            self._ended[loop] = [call]
            self.wakeups += 1
        try:
            loop.call_soon_threadsafe(self._deliver, loop)
        except RuntimeError:  # the loop is closed: nobody waits for these any more
            with self._lock:
                self._ended.pop(loop, None)

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        """On `loop`: every call that ended since the last delivery gets its outcome."""
        with self._lock:
            ended = self._ended.pop(loop, ())
        for call in ended:
            call.end()


def _close_at_exit(ref: weakref.ref[Offload]) -> None:
    offload = ref()
    if offload is not None:
        offload._close()  # noqa: SLF001


def _reset_in_child(ref: weakref.ref[Offload]) -> None:
    offload = ref()
    if offload is not None:
        offload._reset()  # noqa: SLF001


_OFFLOAD = Offload()


async def in_thread(function: Callable[..., T], /, *args: Any) -> T:
    """`function(*args)` on the process's `Offload` runners (see the module docstring)."""
    return await _OFFLOAD.run(function, *args)
