"""`Client.map`: requests pulled lazily from any iterable, run by workers under the pool, their
outcomes yielded as they end (or in input order).

Workers and the consumer meet in a `_Handoff`: a deque of ended outcomes, one future the
consumer parks on, and a window of requests pulled and not yet handed to the consumer: twice
the pool's width less one, so the pool's worth can run while the rest wait for the caller (its
turn to take them, or ordered, an outcome ahead of them). A worker takes room in the window
before pulling; the consumer gives it back as it takes each outcome, before the caller's loop
body runs. So a slow consumer holds the workers back (no more than the window's worth of
outcomes, each holding its images, waits for it), and with one place a worker pulls its next
request only once the caller has seen its last outcome (a batch that stops on a failing outcome
sends nothing after it): by design, not by a yield to the loop somewhere. A window of only the
pool's width would leave a place idle for every outcome the caller has not taken yet, and park
every worker on the caller each time. While a failed outcome waits for the caller, though,
nothing is pulled: a caller that stops on a failure (a full disk, a rejected key) has sent no
more than the requests already running when it failed. All of it is plain asyncio, O(1) a
request: this is the hot path of every batch."""

from __future__ import annotations

import asyncio
from collections import deque
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

from ._exceptions import ClientClosedError
from ._folders import check_folder
from ._generation import Engine
from ._lease import Lease, width_of
from ._models import ImageRequest, Timings
from ._naming import FolderNames
from ._offload import in_thread
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
        delivery = await _with_names(delivery)
        width = width_of(self.engine.pool)
        source = _Source(requests)
        # Up to width - 1 outcomes may wait for the caller (ordered: behind a slow one) while
        # `width` run.
        window = 2 * width - 1
        handoff = _Handoff(asyncio.get_running_loop(), window, ordered)
        workers = {
            asyncio.create_task(self._worker(source, handoff, delivery)) for _ in range(width)
        }
        handoff.running = len(workers)
        self._tasks |= workers
        try:
            while True:
                outcome = handoff.take()
                if outcome is not None:
                    yield outcome
                elif handoff.running:
                    await handoff.arrival()
                else:
                    break
            for outcome in handoff.left_behind():
                yield outcome
            with forgetting():
                if handoff.broken is not None:
                    raise handoff.broken
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

    async def _worker(self, source: _Source, handoff: _Handoff, delivery: Delivery) -> None:
        clock, engine = self.engine.clock, self.engine
        try:
            while True:
                if not handoff.take_room():
                    await handoff.room()
                lease = Lease(engine.pool, patience=None)  # map waits for its places
                try:
                    # One worker at a time takes a request, then waits for its place: no place
                    # is held while a slow source is awaited, and one request at most is
                    # pulled ahead of its place.
                    async with source.lock:
                        done = source.exhausted or engine.closing or handoff.broken is not None
                        item = None if done else await source.pull()
                        if item is None:
                            handoff.give_back()
                            return
                        asked = clock.monotonic()
                        await lease.acquire()
                    outcome = await self._outcome(
                        *item, lease, queued=clock.monotonic() - asked, delivery=delivery
                    )
                finally:
                    await lease.release()
                handoff.hand_over(outcome)
        except Exception as error:  # noqa: BLE001 - raised by the map once what runs has ended
            forget_frames(error)
            if handoff.broken is None:
                handoff.broken = error
        finally:
            handoff.running -= 1
            if not handoff.running:
                handoff.wake()

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


@attrs.define(eq=False)
class _Handoff:
    """Between a map's workers and its consumer: the outcomes ended and not taken yet, and the
    window of requests pulled and not yet handed to the consumer (see the module)."""

    _loop: asyncio.AbstractEventLoop = attrs.field(alias="loop")
    window: int
    ordered: bool
    running: int = 0
    """Workers not ended yet: the map ends once none is and no outcome is left."""
    broken: Exception | None = None
    """A worker's own failure (not a request's): nothing more is pulled, the map raises it."""
    _ended: deque[Outcome] = attrs.Factory(deque)
    _held: dict[int, Outcome] = attrs.Factory(dict)
    """Ordered: outcomes ended before one ahead of them."""
    _wanted: int = 0
    """Ordered: the index of the next outcome to yield."""
    _taken: int = 0
    """Room taken in the window: requests pulled (or being pulled) and not handed on."""
    _failures: int = 0
    """Failed outcomes not taken by the consumer yet: no room is given while there is one."""
    _waiting: deque[asyncio.Future[None]] = attrs.Factory(deque)
    """Workers waiting for room; one waits only while the window is full or a failure waits
    for the consumer."""
    _consumer: asyncio.Future[None] | None = None

    def take_room(self) -> bool:
        """Take room in the window for one request if there is some (none is waited for then:
        a worker waits only while the window is full or a failure waits for the consumer)."""
        if self._taken < self.window and not self._failures:
            self._taken += 1
            return True
        return False

    async def room(self) -> None:
        """Take room in the window for one request, waiting (first come, first served) until
        the consumer gives some back."""
        if self.take_room():
            return
        waiter = self._loop.create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled():  # given the room as it was cancelled: pass it on
                self.give_back()
            raise

    def give_back(self) -> None:
        """A request is handed on (or none was pulled): its room goes to those waiting."""
        self._taken -= 1
        self._let_in()

    def _let_in(self) -> None:
        """Room to the workers waiting, first come first served, while there is some."""
        waiting = self._waiting
        while waiting and self._taken < self.window and not self._failures:
            waiter = waiting.popleft()
            if not waiter.done():
                self._taken += 1
                waiter.set_result(None)

    def hand_over(self, outcome: Outcome) -> None:
        """A worker's outcome, for the consumer."""
        self._ended.append(outcome)
        self._failures += outcome.error is not None
        self.wake()

    def wake(self) -> None:
        consumer = self._consumer
        if consumer is not None and not consumer.done():
            consumer.set_result(None)

    async def arrival(self) -> None:
        """Wait until an outcome is handed over or the last worker ends."""
        self._consumer = self._loop.create_future()
        try:
            await self._consumer
        finally:
            self._consumer = None

    def take(self) -> Outcome | None:
        """The next outcome for the consumer, if one has ended (ordered: if the next in input
        order has), its room given back to the workers; None if none is ready yet."""
        held, ended = self._held, self._ended
        while True:
            if self._wanted in held:
                outcome = held.pop(self._wanted)
            elif ended:
                outcome = ended.popleft()
                if self.ordered and outcome.index != self._wanted:
                    held[outcome.index] = outcome
                    continue
            else:
                return None
            self._wanted += 1
            self._failures -= outcome.error is not None
            self.give_back()
            return outcome

    def left_behind(self) -> Iterator[Outcome]:
        """Ordered, once every worker has ended: the outcomes held behind a request that never
        ended (its worker cancelled by `aclose`, or broken); they are paid for all the same."""
        held = self._held
        for index in sorted(held):
            outcome = held.pop(index)
            self._failures -= outcome.error is not None
            self.give_back()
            yield outcome


@attrs.define
class _Source:
    """The requests of a `map`, pulled one at a time (under `lock`) by a worker with a place."""

    _requests: Iterable[ImageRequest] | AsyncIterable[ImageRequest] = attrs.field(alias="requests")
    _iterator: Iterator[ImageRequest] | AsyncIterator[ImageRequest] = attrs.field(init=False)
    lock: asyncio.Lock = attrs.Factory(asyncio.Lock)
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


async def _with_names(delivery: Delivery) -> Delivery:
    """`delivery` with its folder's names read once for the whole map (off the loop): each
    request is then checked before paying without a system call (`FolderNames`)."""
    if delivery.folder is None or delivery.overwrite:
        return delivery
    try:
        names = await in_thread(FolderNames.scan, delivery.folder)
    except OSError:  # a folder we may write in but not list: each request asks it instead
        return delivery
    return attrs.evolve(delivery, names=names)
