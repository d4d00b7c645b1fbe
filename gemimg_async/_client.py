"""The client: one pool shared by every request, from `generate` to `map`.

Data flows one way: request value -> pool -> transport -> streamed answer -> sink -> file.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import random
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypedDict, Unpack, cast

import aiofiles
import anyio
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from ._clock import Clock, SystemClock
from ._config import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_IMAGE_BYTES,
    RetryPolicy,
    Timeouts,
)
from ._exceptions import (
    APIError,
    ClientClosedError,
    ConfigurationError,
    DownloadError,
    GemimgError,
    MalformedResponseError,
    OutcomeUnknownError,
    RefusalError,
)
from ._inputs import encode_images
from ._jsonstream import JSONStreamError, JSONTruncatedError
from ._limits import AdaptiveLimit, Pool, RateLimit, Slot
from ._models import GeneratedImage, ImageInput, ImageRequest, Model, ResponseFormat, Timings
from ._results import GenerationResult, Outcome
from ._retry import (
    DownloadRetrier,
    Failure,
    GenerationRetrier,
    RetryBudget,
    call_with_retries,
    classify,
)
from ._sinks import (
    WRITE_BLOCK,
    AtomicFile,
    BodyImage,
    ImageSink,
    MemoryImage,
    NotAnImageError,
    TooLargeError,
    receive_body,
)
from ._transport import Transport, document_error, endpoint_url

__all__ = ["ENV_API_KEY", "ENV_BASE_URL", "Client", "ClientStats", "GenerateOptions"]

log = logging.getLogger("gemimg_async")

ENV_API_KEY = "GEMIMG_API_KEY"
ENV_BASE_URL = "GEMIMG_BASE_URL"
_RATIO_TOLERANCE = 0.05


class GenerateOptions(TypedDict, total=False):
    """The keyword arguments of `Client.generate` besides `model`."""

    size: str | None
    n: int
    images: ImageInput | Sequence[ImageInput] | None
    response_format: ResponseFormat
    save_to: str | os.PathLike[str] | None
    allow_any_size: bool
    timeouts: Timeouts | None


@attrs.frozen
class ClientStats:
    """A snapshot of the client's pool."""

    max_concurrency: int
    limit: int
    """The in-flight limit now: below `max_concurrency` after the relay throttled."""
    in_flight: int
    waiting: int
    """Requests waiting for a place in the pool now."""
    pool_waits: int
    """Requests that have had to wait for a place, since the client was made."""
    rate_waits: int
    """Requests that have had to wait for the `rpm` limit."""
    retry_tokens: float
    """What is left of the retry budget; retries stop at half of `RetryPolicy.budget_tokens`."""


class Client:
    """An async client for Gemini 3 Pro Image behind an OpenAI-compatible relay.

    One client holds one pool: at most `max_concurrency` generations in flight across every
    task that uses it, fewer while the relay throttles, started at most `rpm` times a minute.
    Use it as `async with Client(...) as client:`, or call `aclose()` when done.
    `api_key` and `base_url` default to the GEMIMG_API_KEY and GEMIMG_BASE_URL variables.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        rpm: float | None = None,
        timeouts: Timeouts = Timeouts(),
        retry: RetryPolicy = RetryPolicy(),
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        allow_insecure_http: bool = False,
        clock: Clock | None = None,
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        base_url = base_url if base_url is not None else os.environ.get(ENV_BASE_URL)
        if not api_key:
            raise ConfigurationError(f"no API key: pass api_key= or set {ENV_API_KEY}")
        if api_key != api_key.strip() or any(c in api_key for c in "\r\n\t "):
            raise ConfigurationError("the API key contains whitespace: check how it was pasted")
        if not base_url:
            raise ConfigurationError(
                "no relay: pass base_url= (such as 'https://api.example.com') "
                f"or set {ENV_BASE_URL}"
            )
        self._clock: Clock = clock or SystemClock()
        self._transport = Transport(
            endpoint_url(base_url, allow_insecure_http=allow_insecure_http),
            api_key=api_key,
            timeouts=timeouts,
            clock=self._clock,
        )
        self._limit = AdaptiveLimit(max_concurrency)
        self._rate = RateLimit(rpm, self._clock) if rpm is not None else None
        self._pool = Pool(self._limit, self._rate)
        self._retry = retry
        self._budget = RetryBudget(retry.budget_tokens, retry.budget_ratio)
        self._max_image_bytes = max_image_bytes
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets
        self._workers: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return (
            f"Client(base_url={str(self._transport.endpoint.with_path('/'))!r}, "
            f"max_concurrency={self._limit.maximum})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel what `map` still runs and close the connections.

        A `map` still iterating then raises ClientClosedError; so does any later call.
        """
        for task in self._workers:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*self._workers, return_exceptions=True)
            await self._transport.aclose()

    @property
    def stats(self) -> ClientStats:
        return ClientStats(
            max_concurrency=self._limit.maximum,
            limit=self._limit.limit,
            in_flight=self._limit.in_flight,
            waiting=self._limit.waiting,
            pool_waits=self._limit.waits,
            rate_waits=self._rate.waits if self._rate else 0,
            retry_tokens=self._budget.tokens,
        )

    async def generate(
        self,
        prompt: str,
        *,
        model: Model | str = Model.STANDARD,
        size: str | None = None,
        n: int = 1,
        images: ImageInput | Sequence[ImageInput] | None = None,
        response_format: ResponseFormat = "url",
        save_to: str | os.PathLike[str] | None = None,
        allow_any_size: bool = False,
        timeouts: Timeouts | None = None,
    ) -> GenerationResult:
        """Generate `n` images of `prompt`, from `images` if given; with `save_to`, on disk.

        Bad input raises a ValidationError before anything is sent.
        """
        request = ImageRequest(
            prompt,
            model=model,
            size=size,
            n=n,
            images=images,
            response_format=response_format,
            allow_any_size=allow_any_size,
        )
        return await self.send(request, save_to=save_to, timeouts=timeouts)

    async def generate_2k(
        self, prompt: str, **options: Unpack[GenerateOptions]
    ) -> GenerationResult:
        """`generate` with the 2K model."""
        return await self.generate(prompt, model=Model.RES_2K, **options)

    async def generate_4k(
        self, prompt: str, **options: Unpack[GenerateOptions]
    ) -> GenerationResult:
        """`generate` with the 4K model (and its longer read timeout)."""
        return await self.generate(prompt, model=Model.RES_4K, **options)

    async def send(
        self,
        request: ImageRequest,
        *,
        save_to: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        timeouts: Timeouts | None = None,
    ) -> GenerationResult:
        """Generate what `request` asks, waiting for a place in the pool first."""
        asked = self._clock.monotonic()
        async with _Lease(self._pool) as lease:
            return await self._execute(
                request,
                lease,
                queued=self._clock.monotonic() - asked,
                delivery=_Delivery.to(save_to, overwrite=overwrite, timeouts=timeouts),
            )

    async def map(
        self,
        requests: Iterable[ImageRequest] | AsyncIterable[ImageRequest],
        *,
        save_to: str | os.PathLike[str] | None = None,
        ordered: bool = False,
        overwrite: bool = False,
        timeouts: Timeouts | None = None,
    ) -> AsyncGenerator[Outcome, None]:
        """Run every request through the pool; yield an `Outcome` for each as it ends.

        A request is pulled from `requests` only when the previous one has a place in the pool,
        so a generator of a million prompts costs no more than the pool, and at most one request
        pulled waits for its place. One request's failure is its outcome's `error`; the others go
        on. Outcomes come in completion order, or input order with `ordered=True` (holding at
        most twice the pool's size). Leaving the loop early cancels what is in flight: use
        `contextlib.aclosing(client.map(...))` to have that happen at once rather than when the
        generator is collected.
        """
        source = _Source(requests)
        send, receive = anyio.create_memory_object_stream[Outcome]()
        window = anyio.Semaphore(2 * self._limit.maximum) if ordered else None
        delivery = _Delivery.to(save_to, overwrite=overwrite, timeouts=timeouts)
        workers = {
            asyncio.create_task(self._map_worker(source, send.clone(), window, delivery))
            for _ in range(self._limit.maximum)
        }
        send.close()
        self._workers |= workers
        try:
            async with receive:
                async for outcome in _in_order(receive) if ordered else receive:
                    if window is not None:
                        window.release()
                    yield outcome
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
            self._workers -= workers

    async def _map_worker(
        self,
        source: _Source,
        send: MemoryObjectSendStream[Outcome],
        window: anyio.Semaphore | None,
        delivery: _Delivery,
    ) -> None:
        async with send:
            while True:
                if window is not None:
                    await window.acquire()
                lease = _Lease(self._pool)
                item = None
                try:
                    # One worker at a time takes a request, then waits for its place: no place
                    # is held while a slow source is awaited, and one request at most is
                    # pulled ahead of its place.
                    async with source.lock:
                        item = None if source.exhausted else await source.pull()
                        if item is None:
                            return
                        asked = self._clock.monotonic()
                        await lease.acquire()
                    outcome = await self._outcome(
                        *item, lease, queued=self._clock.monotonic() - asked, delivery=delivery
                    )
                finally:
                    lease.release()
                    if window is not None and item is None:
                        window.release()
                await send.send(outcome)

    async def _outcome(
        self,
        index: int,
        request: ImageRequest,
        lease: _Lease,
        *,
        queued: float,
        delivery: _Delivery,
    ) -> Outcome:
        """`_execute`, with a failure as the outcome's error rather than raised."""
        started = self._clock.time()
        try:
            result = await self._execute(request, lease, queued=queued, delivery=delivery)
        except Exception as error:  # noqa: BLE001 - one request's failure is its outcome
            return Outcome(
                index,
                request,
                error=error,
                attempts=getattr(error, "attempts", 0),
                timings=Timings(queued=queued),
                started=started,
                finished=self._clock.time(),
            )
        return Outcome(
            index,
            request,
            result=result,
            attempts=result.attempts,
            timings=result.timings,
            started=started,
            finished=self._clock.time(),
        )

    async def _execute(
        self,
        request: ImageRequest,
        lease: _Lease,
        *,
        queued: float,
        delivery: _Delivery,
    ) -> GenerationResult:
        trace = _Trace(request.idempotency_key or str(uuid.uuid4()))
        try:
            return await self._run(request, lease, trace, queued=queued, delivery=delivery)
        except GemimgError as error:
            error.idempotency_key = trace.key
            error.request_ids = tuple(trace.request_ids)
            error.request_id = error.request_id or trace.request_id
            error.attempts = trace.attempts
            raise

    async def _run(
        self,
        request: ImageRequest,
        lease: _Lease,
        trace: _Trace,
        *,
        queued: float,
        delivery: _Delivery,
    ) -> GenerationResult:
        if delivery.folder is not None and request.id is not None and not delivery.overwrite:
            _refuse_taken_names(delivery.folder, request.id, request.n)
        body = request.body(await encode_images(request.images))

        async def attempt(number: int) -> tuple[Any, list[BodyImage]]:
            trace.attempts = number
            try:
                return await self._attempt(body, request.model, delivery, trace)
            except APIError as error:
                if classify(error) is Failure.THROTTLED and lease.slot is not None:
                    self._limit.throttled(lease.slot)
                raise

        async def wait(delay: float) -> None:
            # the place goes back while waiting: a retry queues under the limit and rate of now
            lease.release()
            await self._clock.sleep(delay)
            await lease.acquire()

        began = self._clock.monotonic()
        doc, found = await call_with_retries(
            attempt,
            GenerationRetrier(self._retry, self._budget, self._rng),
            wait,
            what=f"generation {trace.key[:8]}",
        )
        self._limit.succeeded()
        self._budget.succeeded()
        generated = self._clock.monotonic()
        created = doc.get("created")
        created = created if isinstance(created, int) and not isinstance(created, bool) else None
        stem = request.id or _default_stem(created or self._clock.time(), trace.key)
        images = await self._place(found, stem, delivery, paid=trace.key[:8])
        _check_shape(request, images)
        result = GenerationResult(
            request=request,
            images=images,
            created=created,
            idempotency_key=trace.key,
            request_ids=tuple(trace.request_ids),
            attempts=trace.attempts,
            timings=Timings(queued, generated - began, self._clock.monotonic() - generated),
            stem=stem,
            saver=self._save,
        )
        log.info(
            "%s: %d image(s) in %.1f s (request id %s)",
            request.model,
            len(images),
            result.timings.total,
            result.request_id,
        )
        return result

    async def _attempt(
        self, body: bytes, model: str, delivery: _Delivery, trace: _Trace
    ) -> tuple[Any, list[BodyImage]]:
        """One POST, its answer streamed into sinks; raises what the answer amounts to."""
        request_id = None
        try:
            async with self._transport.generation(
                body, idempotency_key=trace.key, model=model, timeouts=delivery.timeouts
            ) as answer:
                request_id = answer.request_id
                if request_id:
                    trace.request_ids.append(request_id)
                doc, found = await receive_body(answer.chunks, self._sink_opener(delivery.folder))
        except APIError as error:
            if error.request_id:
                trace.request_ids.append(error.request_id)
            raise
        except JSONTruncatedError as exc:
            raise OutcomeUnknownError(
                f"the relay's answer ended early ({exc}); it may have generated and billed it"
            ) from exc
        except (JSONStreamError, NotAnImageError, TooLargeError) as exc:
            raise MalformedResponseError(
                f"the relay answered 200, but {exc}", status=200, request_id=request_id
            ) from exc
        if not found:
            raise _no_image_error(doc, request_id)
        return doc, found

    def _sink_opener(self, folder: Path | None) -> Callable[[], ImageSink]:
        if folder is None:
            return functools.partial(MemoryImage, self._max_image_bytes)
        return functools.partial(AtomicFile.create, folder, max_bytes=self._max_image_bytes)

    async def _place(
        self, found: Sequence[BodyImage], stem: str, delivery: _Delivery, *, paid: str
    ) -> tuple[GeneratedImage, ...]:
        """The found images as results: committed to files, downloaded, or kept in memory.

        They are paid for: a name taken meanwhile gets the `paid` suffix rather than losing one.
        """
        placed: list[GeneratedImage] = []
        try:
            for number, image in enumerate(found):
                if image.sink is not None:
                    placed.append(
                        await image.sink.settle(
                            number, stem, overwrite=delivery.overwrite, fallback=paid
                        )
                    )
                elif delivery.folder is None:
                    placed.append(GeneratedImage(number, url=image.url))
                else:
                    assert image.url is not None
                    placed.append(
                        await self._download(
                            image.url, number, stem, delivery.folder, delivery, fallback=paid
                        )
                    )
        except BaseException:
            for image in found[len(placed) :]:
                if image.sink is not None:
                    image.sink.abort()
            raise
        return tuple(placed)

    async def _download(
        self,
        url: str,
        index: int,
        stem: str,
        folder: Path,
        delivery: _Delivery,
        *,
        fallback: str | None = None,
    ) -> GeneratedImage:
        """Stream `url` into `folder/{stem}_{index}.{ext}`, retrying what may succeed later."""

        async def attempt(_: int) -> GeneratedImage:
            sink = AtomicFile.create(folder, max_bytes=self._max_image_bytes)
            try:
                async with self._transport.download(
                    url, delivery.timeouts, max_bytes=self._max_image_bytes
                ) as answer:
                    async for chunk in answer.chunks:
                        await sink.write(chunk)
            except (NotAnImageError, TooLargeError) as exc:
                sink.abort()
                raise DownloadError(f"{exc}", url=url, status=200) from exc
            except BaseException:
                sink.abort()
                raise
            try:
                image = await sink.settle(
                    index, stem, overwrite=delivery.overwrite, fallback=fallback
                )
            except NotAnImageError as exc:
                raise DownloadError(f"{exc}", url=url, status=200) from exc
            return attrs.evolve(image, url=url)

        return await call_with_retries(
            attempt, DownloadRetrier(self._retry, self._rng), self._clock.sleep, what="download"
        )

    async def _save(
        self,
        images: Sequence[GeneratedImage],
        folder: Path,
        stem: str,
        *,
        overwrite: bool,
    ) -> tuple[GeneratedImage, ...]:
        """`GenerationResult.save`: each image from its bytes, its file, or its URL."""
        saved = []
        for image in images:
            if image.data is None and image.path is None:
                assert image.url is not None
                saved.append(
                    await self._download(
                        image.url, image.index, stem, folder, _Delivery(folder, overwrite)
                    )
                )
                continue
            sink = AtomicFile.create(folder, max_bytes=self._max_image_bytes)
            try:
                for block in _blocks(image.data) if image.data is not None else ():
                    await sink.write(block)
                if image.path is not None and image.data is None:
                    async with aiofiles.open(image.path, "rb") as source:
                        while block := await source.read(WRITE_BLOCK):
                            await sink.write(block)
            except BaseException:
                sink.abort()
                raise
            settled = await sink.settle(image.index, stem, overwrite=overwrite)
            saved.append(attrs.evolve(image, path=settled.path))
        return tuple(saved)


def _blocks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), WRITE_BLOCK):
        yield bytes(view[start : start + WRITE_BLOCK])


def _no_image_error(doc: Any, request_id: str | None) -> APIError:
    """What a 200 answer without an image means: a refusal, an error body, or garbage."""
    if isinstance(doc, dict):
        message, code = document_error(doc)
        if message is not None or "error" in doc:
            return RefusalError(
                f"the relay answered 200 with an error: {message or doc.get('error')}",
                status=200,
                code=code,
                request_id=request_id,
            )
        if doc.get("data") == []:
            return RefusalError(
                'the relay answered 200 with no image ("data": []): usually the model refused '
                "the prompt or an input image on safety grounds",
                status=200,
                request_id=request_id,
            )
    return MalformedResponseError(
        f"the relay answered 200 without an image: {str(doc)[:200]}",
        status=200,
        request_id=request_id,
    )


def _refuse_taken_names(folder: Path, stem: str, n: int) -> None:
    """FileExistsError before paying for images that could not be saved under their names."""
    for index in range(n):
        for extension in ("png", "jpg", "webp", "gif"):
            path = folder / f"{stem}_{index}.{extension}"
            if os.path.lexists(path):
                raise FileExistsError(
                    errno.EEXIST,
                    "an image by that name exists; pass overwrite=True or another id",
                    str(path),
                )


def _default_stem(created: float, key: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(created))}-{key[:8]}"


def _check_shape(request: ImageRequest, images: Sequence[GeneratedImage]) -> None:
    """Warn about what relays do silently: fewer images than asked, the wrong aspect ratio."""
    if len(images) < request.n:
        log.warning("asked for %d images, the relay answered %d", request.n, len(images))
    if request.size is None:
        return
    wanted_w, wanted_h = (int(side) for side in request.size.split(":"))
    for image in images:
        if image.width and image.height:
            ratio = (image.width / image.height) / (wanted_w / wanted_h)
            if abs(ratio - 1) > _RATIO_TOLERANCE:
                log.warning(
                    "asked for %s, got %dx%d: the relay may have ignored size",
                    request.size,
                    image.width,
                    image.height,
                )


@attrs.define
class _Trace:
    """What one generation has done so far, for its result or its error."""

    key: str
    """The Idempotency-Key of every attempt."""
    request_ids: list[str] = attrs.Factory(list)
    attempts: int = 0

    @property
    def request_id(self) -> str | None:
        return self.request_ids[-1] if self.request_ids else None


@attrs.frozen
class _Delivery:
    """Where a request's images go, and how."""

    folder: Path | None
    overwrite: bool = False
    timeouts: Timeouts | None = None

    @classmethod
    def to(
        cls,
        save_to: str | os.PathLike[str] | None,
        *,
        overwrite: bool = False,
        timeouts: Timeouts | None = None,
    ) -> _Delivery:
        return cls(None if save_to is None else Path(save_to), overwrite, timeouts)


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


@attrs.define
class _Lease:
    """A request's place in the pool: held while it is sent, given back while it waits."""

    _pool: Pool = attrs.field(alias="pool")
    slot: Slot | None = None

    async def acquire(self) -> None:
        self.slot = await self._pool.acquire()

    def release(self) -> None:
        if self.slot is not None:
            self._pool.release(self.slot)
            self.slot = None

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


async def _in_order(outcomes: AsyncIterable[Outcome]) -> AsyncIterator[Outcome]:
    held: dict[int, Outcome] = {}
    wanted = 0
    async for outcome in outcomes:
        held[outcome.index] = outcome
        while wanted in held:
            yield held.pop(wanted)
            wanted += 1
