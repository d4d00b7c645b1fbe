"""One generation, start to end: lease -> retry loop -> dialect request -> answer -> placed images.

`Engine` is what every generation of a client runs through: the relay session, the dialect, the
pool, the retry policy and budget, the `Saver` that puts paid images in place, and the price
table a result's `cost` is estimated by.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import weakref
from decimal import Decimal

import anyio
import attrs
import yarl

from ._answer import Received, receive
from ._clock import Clock
from ._config import USE_CLIENT_DEFAULT, RetryPolicy
from ._dialects import Dialect, Outgoing
from ._events import (
    AnswerReceived,
    AttemptFailed,
    GenerationFinished,
    ImageSaved,
    Listener,
    RequestSent,
    emit,
)
from ._exceptions import APIError, ClientClosedError, EventLoopError, GemimgError
from ._folders import check_folder
from ._inputs import encode_images
from ._lease import Lease, Patience
from ._limits import Pool
from ._models import ImageRequest, Timings
from ._naming import default_stem, new_key, unique
from ._prices import DEFAULT_PRICES, Cost, Prices, estimate, header_cost, usage_cost
from ._results import GenerationResult, SaveError, report_shortfalls
from ._retry import GenerationRetrier, RetryBudget, Verdict, classify
from ._routing import Router, Via
from ._save import Delivery, Placed, Saver, Tagging, tagging_of
from ._transport import Relay

__all__ = ["Engine"]

log = logging.getLogger("gemimg_async")
_COSTS_KEPT = 256


@attrs.define
class _Trace:
    """What one generation has done so far, for its result or its error."""

    key: str
    """The Idempotency-Key of every attempt."""
    listeners: tuple[Listener, ...]
    """The client's listener and the call's, those there are: events are made only for them."""
    request_ids: list[str] = attrs.Factory(list)
    attempts: int = 0
    reported: Decimal | None = None
    """What the relay said the last answer cost (a header, or its usage priced)."""
    tagging: Tagging | None = None
    """The provenance of the last answer's images, for the files they go to."""
    via: Via | None = None
    """Where the last attempt went (its endpoint's name, with several)."""

    def saw(self, request_id: str | None) -> None:
        if request_id:
            self.request_ids.append(request_id)

    def stamp(self, error: GemimgError) -> None:
        error.idempotency_key = self.key
        error.request_ids = tuple(self.request_ids)
        error.request_id = error.request_id or (self.request_ids[-1] if self.request_ids else None)
        error.attempts = self.attempts
        error.reported_cost = self.reported
        error.endpoint = self.via.name if self.via else None


@attrs.define
class Engine:
    """The machinery every generation of one client shares."""

    relay: Relay
    base: yarl.URL
    dialect: Dialect
    pool: Pool | Router
    retry: RetryPolicy
    budget: RetryBudget
    saver: Saver
    clock: Clock
    on_event: Listener | None = None
    """The client's listener: every call's events."""
    prices: Prices = DEFAULT_PRICES
    rng: random.Random = attrs.Factory(random.Random)
    _loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
    closing: bool = False
    """Set by `Client.aclose`: nothing new is sent, what is in flight may finish."""
    _sending: int = 0
    _idle: anyio.Event | None = None
    _costs: dict[tuple[str, int, int], Cost] = attrs.Factory(dict)
    """Estimates by (model, n, input images): the same few for every request of a client."""
    _via: Via = attrs.field(init=False)
    """Where attempts go without a router's endpoint: the relay, its base URL and dialect."""

    def __attrs_post_init__(self) -> None:
        self._via = Via(self.relay, self.base, self.dialect)

    def estimate(self, request: ImageRequest) -> Cost:
        """`estimate(request, self.prices)`, worked out once per kind of request."""
        key = (request.model, request.n, len(request.images))
        cost = self._costs.get(key)
        if cost is None:
            if len(self._costs) >= _COSTS_KEPT:
                self._costs.clear()
            cost = self._costs[key] = estimate(request, self.prices)
        return cost

    async def drained(self) -> None:
        """Return once no request is in flight (sent, its answer not read yet)."""
        while self._sending:
            self._idle = self._idle or anyio.Event()
            await self._idle.wait()

    def check_loop(self) -> None:
        """EventLoopError unless the running loop is the one this engine first ran on (its
        connections and pool belong to it)."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = weakref.ref(loop)
        elif self._loop() is not loop:
            raise EventLoopError(
                "this client is used on another event loop than the one it first ran on (a "
                "second asyncio.run()?): its connections belong to that loop. Make one client "
                "per event loop, and close it there"
            )

    async def send(
        self, request: ImageRequest, delivery: Delivery, pool_timeout: Patience = USE_CLIENT_DEFAULT
    ) -> GenerationResult:
        """See that the folder takes files, wait for a place (`pool_timeout`), then `run`."""
        self.check_loop()
        if delivery.folder is not None:
            check_folder(delivery.folder)
        asked = self.clock.monotonic()
        async with Lease(self.pool, pool_timeout) as lease:
            return await self.run(
                request, lease, queued=self.clock.monotonic() - asked, delivery=delivery
            )

    async def run(
        self, request: ImageRequest, lease: Lease, *, queued: float, delivery: Delivery
    ) -> GenerationResult:
        """Generate what `request` asks under `lease`; its images placed as `delivery` says."""
        trace = _Trace(request.idempotency_key or new_key(), _listeners(self.on_event, delivery))
        listeners = trace.listeners
        try:  # one coroutine for the whole generation: each level of awaiting costs every request
            if request.id is not None:
                delivery.refuse_taken(request.id, request.n)
            encoded = await encode_images(request.images) if request.images else []
            began = self.clock.monotonic()
            received = await self._retrying(encoded, request, lease, trace, delivery)
            lease.succeeded()
            self.budget.succeeded()
            generated = self.clock.monotonic()
            placed = await self._place(request, received, trace, delivery)
            result = GenerationResult(
                request=request,
                images=placed.images,
                created=received.reading.created,
                idempotency_key=trace.key,
                request_ids=tuple(trace.request_ids),
                attempts=trace.attempts,
                timings=Timings(queued, generated - began, self.clock.monotonic() - generated),
                stem=placed.stem,
                usage=received.reading.usage,
                text=received.reading.text,
                saver=self.saver,
                cost=self.estimate(request).with_reported(trace.reported),
                endpoint=trace.via.name if trace.via else None,
            )
            report_shortfalls(result)
            _all_saved(placed, result, delivery)
        except Exception as error:
            if isinstance(error, GemimgError):
                trace.stamp(error)
            if listeners:
                ids, said = tuple(trace.request_ids), _said(error)
                emit(
                    listeners,
                    GenerationFinished(request, trace.attempts, 0, Timings(queued), ids, said),
                )
            raise
        if listeners:
            done = GenerationFinished(
                request, result.attempts, len(result.images), result.timings, result.request_ids
            )
            emit(listeners, done)
        return result

    async def _retrying(
        self,
        encoded: list[str],
        request: ImageRequest,
        lease: Lease,
        trace: _Trace,
        delivery: Delivery,
    ) -> Received:
        """Attempts until one gets an answer with images, or the retry rules say stop."""
        retrier = None  # made at the first failure: most generations never fail
        for number in itertools.count(1):
            trace.attempts = number
            via = trace.via = lease.via(self._via)
            outgoing = via.dialect.outgoing(via.base, request, encoded)
            try:
                if self.closing:
                    raise ClientClosedError("the client is closed: nothing new is sent")
                self._sending += 1
                try:
                    return await self._post(outgoing, request, delivery, trace)
                finally:
                    self._sent()
            except GemimgError as error:
                moves = lease.can_move(kind := classify(error))  # to another endpoint, at once
                if moves:
                    verdict = Verdict(kind, 0.0)
                else:
                    retrier = retrier or GenerationRetrier(self.retry, self.budget, self.rng)
                    verdict = retrier.judge(error)
                lease.failed(verdict.kind)
                status = getattr(error, "status", None)
                failed = AttemptFailed(
                    request, number, _said(error), verdict.kind.value, status, verdict.delay
                )
                emit(trace.listeners, failed)
                if verdict.delay is None:
                    raise
                log.info(
                    "generation %s: attempt %d failed (%s); retrying in %.2f s",
                    trace.key[:8],
                    number,
                    error,
                    verdict.delay,
                )
                await lease.wait(verdict.delay, self.clock)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _place(
        self, request: ImageRequest, received: Received, trace: _Trace, delivery: Delivery
    ) -> Placed:
        """The answer's images in place under their stem; each saved one told to listeners."""
        try:
            stem = request.id or default_stem(request.prompt, trace.key)
        except BaseException:
            for found in received.images:
                if found.sink is not None:
                    found.sink.abort()
            raise
        placed = await self.saver.place(
            received.images, stem, delivery, paid=unique(trace.key), tagging=trace.tagging
        )
        listeners = trace.listeners
        for image in placed.images if listeners else ():
            if image.path is not None:
                saved = ImageSaved(
                    request, image.index, image.path, image.byte_size, image.width, image.height
                )
                emit(listeners, saved)
        log.info(
            "%s: %d image(s) (request id %s)",
            request.model,
            len(placed.images),
            trace.request_ids[-1] if trace.request_ids else None,
        )
        return placed

    def _sent(self) -> None:
        """An attempt is over: the last one tells a closing client that nothing is in flight."""
        self._sending -= 1
        if not self._sending and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def _post(
        self, outgoing: Outgoing, request: ImageRequest, delivery: Delivery, trace: _Trace
    ) -> Received:
        answered, via = False, trace.via or self._via
        listeners = trace.listeners
        sent = self.clock.monotonic()
        trace.reported = trace.tagging = None
        if listeners:
            emit(listeners, RequestSent(request, trace.attempts, trace.key, sent))
        if (before_send := delivery.before_send) is not None:
            await before_send(request)  # a batch's send log: durable before the POST
        try:
            async with via.relay.post(
                outgoing, idempotency_key=trace.key, model=request.model, timeouts=delivery.timeouts
            ) as answer:
                answered = True
                trace.saw(answer.request_id)
                trace.reported = header_cost(answer.headers)  # a refusal may be billed too
                if delivery.writes:  # what files say of themselves: nothing kept in memory asks
                    trace.tagging = tagging_of(
                        request, request_id=answer.request_id, key=trace.key, now=self.clock.time()
                    )
                if listeners:
                    took = self.clock.monotonic() - sent
                    got = AnswerReceived(
                        request, trace.attempts, answer.status, answer.request_id, took
                    )
                    emit(listeners, got)
                received = await receive(
                    answer.chunks,
                    via.dialect,
                    request,
                    self.saver.sink_opener(delivery, trace.tagging),
                    request_id=answer.request_id,
                )
                if trace.reported is None:  # no header: its token counts priced, if any
                    trace.reported = usage_cost(received.reading.usage, self.prices)
                return received
        except GemimgError as error:
            if not answered:
                trace.saw(error.request_id)
            if isinstance(error, APIError) and error.status != 200:  # noqa: PLR2004
                via.dialect.explain(error)
            raise


def _all_saved(placed: Placed, result: GenerationResult, delivery: Delivery) -> None:
    """SaveError (holding `result`, every image) when any image could not be written."""
    if placed.unsaved:
        raise SaveError(
            f"the images were made (and paid for) but could not all be written to "
            f"{delivery.where}: {'; '.join(placed.unsaved)}; error.result holds every "
            "image: those not written as bytes (data) or by URL",
            result=result,
        ) from placed.failure


def _listeners(own: Listener | None, delivery: Delivery) -> tuple[Listener, ...]:
    """The client's listener and the call's, those there are: events are made only for them."""
    if own is None:
        return () if delivery.on_event is None else (delivery.on_event,)
    return (own,) if delivery.on_event is None else (own, delivery.on_event)


def _said(error: BaseException) -> str:
    """`ErrorType: message`, as events and manifests name an error."""
    return f"{type(error).__name__}: {error}"
