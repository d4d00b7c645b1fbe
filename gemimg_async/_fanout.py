"""`Client.map`: requests pulled lazily from any iterable, run by workers under the pool, their
outcomes yielded as they end (or in input order)."""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Generator,
    Iterable,
    Iterator,
)
from typing import cast

import anyio
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from ._exceptions import ClientClosedError
from ._folders import check_folder
from ._generation import Engine
from ._lease import Lease, width_of
from ._models import ImageRequest, Timings
from ._prices import estimate
from ._results import Outcome
from ._save import Delivery
from ._secrets import forget_frames, forgetting

__all__ = ["FanOut"]


@attrs.define
class FanOut:
    """The `map`s of one client, and their worker tasks, which `aclose` cancels."""

    engine: Engine
    _tasks: set[asyncio.Task[None]] = attrs.Factory(set)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def map(
        self,
        requests: Iterable[ImageRequest] | AsyncIterable[ImageRequest],
        delivery: Delivery,
        *,
        ordered: bool,
    ) -> AsyncGenerator[Outcome, None]:
        """See `Client.map`."""
        with forgetting():
            self.engine.check_loop()
            if delivery.folder is not None:
                check_folder(delivery.folder)  # once, before anything is sent
        width = width_of(self.engine.pool)
        source = _Source(requests)
        send, receive = anyio.create_memory_object_stream[Outcome]()
        window = anyio.Semaphore(2 * width) if ordered else None
        workers = {
            asyncio.create_task(self._worker(source, send.clone(), window, delivery))
            for _ in range(width)
        }
        send.close()
        self._tasks |= workers
        try:
            async with receive:
                async for outcome in _in_order(receive) if ordered else receive:
                    if window is not None:
                        window.release()
                    yield outcome
            with forgetting():
                if source.failure is not None:
                    raise source.failure
                if not source.exhausted:
                    raise ClientClosedError("the client was closed while map() was running")
        finally:
            for task in workers:
                task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(*workers, return_exceptions=True)
                await source.aclose()
            self._tasks -= workers

    async def _worker(
        self,
        source: _Source,
        send: MemoryObjectSendStream[Outcome],
        window: anyio.Semaphore | None,
        delivery: Delivery,
    ) -> None:
        clock = self.engine.clock
        async with send:
            while True:
                if window is not None:
                    await window.acquire()
                lease = Lease(self.engine.pool)
                item = None
                try:
                    # One worker at a time takes a request, then waits for its place: no place
                    # is held while a slow source is awaited, and one request at most is
                    # pulled ahead of its place.
                    async with source.lock:
                        done = source.exhausted or self.engine.closing
                        item = None if done else await source.pull()
                        if item is None:
                            return
                        asked = clock.monotonic()
                        await lease.acquire()
                    outcome = await self._outcome(
                        *item, lease, queued=clock.monotonic() - asked, delivery=delivery
                    )
                finally:
                    await lease.release()
                    if window is not None and item is None:
                        window.release()
                await send.send(outcome)

    async def _outcome(
        self,
        index: int,
        request: ImageRequest,
        lease: Lease,
        *,
        queued: float,
        delivery: Delivery,
    ) -> Outcome:
        """`Engine.run`, with a failure as the outcome's error rather than raised."""
        clock = self.engine.clock
        started = clock.time()
        try:
            result = await self.engine.run(request, lease, queued=queued, delivery=delivery)
        except Exception as error:  # noqa: BLE001 - one request's failure is its outcome
            forget_frames(error)
            cost = estimate(request, self.engine.prices)
            return Outcome(
                index,
                request,
                error=error,
                attempts=getattr(error, "attempts", 0),
                timings=Timings(queued=queued),
                started=started,
                finished=clock.time(),
                cost=cost.with_reported(getattr(error, "reported_cost", None)),
            )
        return Outcome(
            index,
            request,
            result=result,
            attempts=result.attempts,
            timings=result.timings,
            started=started,
            finished=clock.time(),
            cost=result.cost,
        )


@attrs.define
class _Source:
    """The requests of a `map`, pulled one at a time (under `lock`) by a worker with a place."""

    _requests: Iterable[ImageRequest] | AsyncIterable[ImageRequest] = attrs.field(alias="requests")
    _iterator: Iterator[ImageRequest] | AsyncIterator[ImageRequest] = attrs.field(init=False)
    lock: anyio.Lock = attrs.Factory(anyio.Lock)
    _count: int = 0
    exhausted: bool = False
    failure: Exception | None = None

    def __attrs_post_init__(self) -> None:
        requests = self._requests
        self._iterator = aiter(requests) if isinstance(requests, AsyncIterable) else iter(requests)

    async def pull(self) -> tuple[int, ImageRequest] | None:
        """The next request and its index; None once there is none (or the iterable failed)."""
        try:
            iterator = self._iterator
            request = (
                await anext(iterator) if isinstance(iterator, AsyncIterator) else next(iterator)
            )
        except (StopIteration, StopAsyncIteration):
            self.exhausted = True
            return None
        except Exception as error:  # noqa: BLE001 - the caller's iterable failed: map re-raises
            self.failure, self.exhausted = error, True
            return None
        if not isinstance(cast("object", request), ImageRequest):
            self.failure = TypeError(f"map() takes ImageRequest values, got {request!r:.80}")
            self.exhausted = True
            return None
        index, self._count = self._count, self._count + 1
        return index, request

    async def aclose(self) -> None:
        """Close a generator left unfinished (a job file it holds open, say)."""
        iterator = self._iterator
        if isinstance(iterator, AsyncGenerator):
            await iterator.aclose()
        elif isinstance(iterator, Generator):
            iterator.close()


async def _in_order(outcomes: AsyncIterable[Outcome]) -> AsyncIterator[Outcome]:
    held: dict[int, Outcome] = {}
    wanted = 0
    async for outcome in outcomes:
        held[outcome.index] = outcome
        while wanted in held:
            yield held.pop(wanted)
            wanted += 1
