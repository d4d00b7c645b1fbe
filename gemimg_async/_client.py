"""The client: a facade over one `Engine` (a relay session, a pool, retries) shared by every call.

Data flows one way: facade -> generation -> dialect -> sink -> file.
"""

from __future__ import annotations

import os
import ssl as _ssl
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypedDict, Unpack

import aiohttp
import anyio

from ._clock import Clock
from ._config import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_IMAGE_BYTES,
    USE_CLIENT_DEFAULT,
    RetryPolicy,
    Timeouts,
    UseClientDefault,
)
from ._destination import Destination
from ._dialects import Dialect, SizeStyle
from ._events import Listener
from ._fanout import FanOut
from ._generation import Engine
from ._limiter import SharedLimiter
from ._models import ImageInput, ImageRequest, Model, ResponseFormat
from ._prices import DEFAULT_PRICES, Prices
from ._results import GenerationResult, Outcome
from ._routing import ENV_API_KEY, ENV_BASE_URL, Endpoint
from ._save import Delivery
from ._secrets import forgetting
from ._setup import build_engine, relays_of, stats_of
from ._stats import ClientStats
from ._stream import Streaming

__all__ = ["ENV_API_KEY", "ENV_BASE_URL", "Client", "GenerateOptions"]


class GenerateOptions(TypedDict, total=False):
    """The keyword arguments of `Client.generate` besides `model`."""

    size: str | None
    n: int
    images: ImageInput | Sequence[ImageInput] | None
    response_format: ResponseFormat
    save_to: str | os.PathLike[str] | None
    allow_any_size: bool
    extra_body: Mapping[str, Any] | None
    timeouts: Timeouts | None
    on_event: Listener | None
    pool_timeout: float | UseClientDefault | None


class Client:
    """An async client for Gemini 3 Pro Image behind an OpenAI-compatible relay.

    One client holds one pool: at most `max_concurrency` generations in flight across every
    task that uses it, fewer while the relay throttles, started at most `rpm` times a minute.
    Use it as `async with Client(...) as client:`, or call `aclose()` when done.
    `api_key` and `base_url` default to the GEMIMG_API_KEY and GEMIMG_BASE_URL variables.
    `endpoints=[gi.Endpoint(base_url, api_key, weight=..., ...), ...]` instead spreads the calls
    over several relays or keys, each with its own pool, weighted, a failing one taken out for
    a while (circuit breaker); an attempt that did no work where it went (not sent, throttled,
    5xx) is retried at another, one whose outcome is unknown never is (see `_routing`).

    `dialect` is the shape of API the relay speaks: "images" (`/v1/images/generations`), "chat"
    (`/v1/chat/completions`) or "gemini" (Google's `generateContent`), or a dialect value such as
    `GeminiDialect(auth="bearer")`. `size_style` is how the size travels ("ratio", "pixels",
    "image_config", "google"; each dialect has its default). `on_event` hears what every call
    does (`RequestSent`, `AnswerReceived`, `AttemptFailed`, `ImageSaved`, `GenerationFinished`).

    Networks: `proxy` sends every request through an http(s) proxy (an https relay through a
    CONNECT tunnel, which alone carries the key); `trust_env=True` takes the proxy from
    HTTP_PROXY, HTTPS_PROXY and NO_PROXY instead. `ssl` is an `ssl.SSLContext`, or the path of
    a CA bundle trusted besides the system's certificates, for the relay and downloads alike.
    `session` is an `aiohttp.ClientSession` of yours for relay requests (the key goes on each
    request; the client never closes it); image downloads use a session of the client's own,
    which never carries the key nor your session's headers.

    `pool_timeout` is how long a call waits for a place in the pool (and its start under `rpm`)
    before it raises PoolTimeoutError, having sent nothing: None (the default) waits as long as
    it takes, 0 fails at once when the pool is full; each call may give its own. `map` always
    waits: it pulls a request only once it has a place.

    `limiter` shares `max_concurrency` and `rpm` with every process (and client) using the same
    relay with the same key: `gi.RedisLimiter(url)` across processes and machines (the uvicorn
    `--workers` recipe), `gi.LocalLimiter()` among the clients of one process. The client never
    closes it. Its places are taken after this client's own, given back when each attempt is
    over (a cancelled call's too); if Redis cannot be reached, the RedisLimiter's
    `on_unreachable` decides: a local share of the limits (its default) or LimiterUnavailableError.

    `prices` is the table each result's `cost` is estimated by (Google's list prices unless the
    relay's own are given). Saved images say where they came from (PNG text chunks, or a JSON
    sidecar beside a C2PA-signed PNG, a JPEG or a WEBP); `metadata=False` keeps the relay's bytes.
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
        dialect: str | Dialect = "images",
        size_style: SizeStyle | None = None,
        on_event: Listener | None = None,
        clock: Clock | None = None,
        proxy: str | None = None,
        trust_env: bool = False,
        ssl: _ssl.SSLContext | str | os.PathLike[str] | None = None,
        session: aiohttp.ClientSession | None = None,
        prices: Prices = DEFAULT_PRICES,
        metadata: bool = True,
        pool_timeout: float | None = None,
        limiter: SharedLimiter | None = None,
        endpoints: Sequence[Endpoint] | None = None,
    ) -> None:
        self._engine: Engine = build_engine(
            api_key=api_key,
            base_url=base_url,
            endpoints=endpoints,
            max_concurrency=max_concurrency,
            rpm=rpm,
            timeouts=timeouts,
            retry=retry,
            max_image_bytes=max_image_bytes,
            allow_insecure_http=allow_insecure_http,
            dialect=dialect,
            size_style=size_style,
            on_event=on_event,
            clock=clock,
            proxy=proxy,
            trust_env=trust_env,
            ssl=ssl,
            session=session,
            prices=prices,
            metadata=metadata,
            pool_timeout=pool_timeout,
            limiter=limiter,
        )
        self._fanout = FanOut(self._engine)

    def __repr__(self) -> str:
        return (
            f"Client(base_url={str(self._engine.base)!r}, "
            f"dialect={self._engine.dialect.name!r}, "
            f"max_concurrency={stats_of(self._engine).max_concurrency})"
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

    async def aclose(self, *, drain: float | None = None) -> None:
        """Send nothing more, cancel what `map` still runs, and close the connections.

        With `drain`, first wait up to that many seconds for the requests already sent: they
        are paid for (a web backend's shutdown). Calls not sent yet raise ClientClosedError; a
        `map` still iterating takes no more requests and then raises it; so does any later call.
        """
        with forgetting():
            self._engine.closing = True
            if drain:
                with anyio.move_on_after(drain):
                    await self._engine.drained()
            await self._fanout.aclose()
            with anyio.CancelScope(shield=True):
                for relay in relays_of(self._engine):
                    await relay.aclose()
                await self._engine.saver.host.aclose()

    @property
    def clock(self) -> Clock:
        """Where the client reads time and waits (a `FakeClock` in tests)."""
        return self._engine.clock

    @property
    def prices(self) -> Prices:
        """The price table results are estimated by (and a batch's cap counts with)."""
        return self._engine.prices

    @property
    def stats(self) -> ClientStats:
        return stats_of(self._engine)

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
        extra_body: Mapping[str, Any] | None = None,
        timeouts: Timeouts | None = None,
        on_event: Listener | None = None,
        pool_timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> GenerationResult:
        """Generate `n` images of `prompt`, from `images` if given; with `save_to`, on disk.

        `extra_body` is merged into the request body: fields a relay takes beyond the dialect's.
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
            extra_body=extra_body,
        )
        return await self.send(
            request,
            save_to=save_to,
            timeouts=timeouts,
            on_event=on_event,
            pool_timeout=pool_timeout,
        )

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
        on_event: Listener | None = None,
        pool_timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> GenerationResult:
        """Generate what `request` asks, waiting for a place in the pool first (at most
        `pool_timeout` seconds, the client's unless given: then PoolTimeoutError, nothing sent)."""
        delivery = Delivery.to(save_to, overwrite=overwrite, timeouts=timeouts, on_event=on_event)
        with forgetting():
            return await self._engine.send(request, delivery, pool_timeout)

    def stream(
        self,
        prompt: str,
        *,
        model: Model | str = Model.STANDARD,
        size: str | None = None,
        n: int = 1,
        images: ImageInput | Sequence[ImageInput] | None = None,
        response_format: ResponseFormat = "url",
        allow_any_size: bool = False,
        extra_body: Mapping[str, Any] | None = None,
        timeouts: Timeouts | None = None,
        on_event: Listener | None = None,
        pool_timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> Streaming:
        """One image of `prompt`, to hand on as it is read: ``async with client.stream(...) as
        image:`` gives its `media_type`, then ``async for chunk in image`` its bytes, in
        bounded memory whatever its size (a web backend's streaming response). One image:
        `n` above 1 is an InvalidCountError.

        The generation runs when the block is entered (a ValidationError before anything is
        sent); a cancelled caller (a client that hung up) cancels it, and nothing is left on
        disk. Draft images are never handed on: the answer is read whole before the final
        image is.
        """
        request = ImageRequest(
            prompt,
            model=model,
            size=size,
            n=n,
            images=images,
            response_format=response_format,
            allow_any_size=allow_any_size,
            extra_body=extra_body,
        )
        delivery = Delivery.to(None, timeouts=timeouts, on_event=on_event)
        return Streaming(self._engine, request, delivery, pool_timeout)

    def map(
        self,
        requests: Iterable[ImageRequest] | AsyncIterable[ImageRequest],
        *,
        save_to: str | os.PathLike[str] | Destination | None = None,
        ordered: bool = False,
        overwrite: bool = False,
        timeouts: Timeouts | None = None,
        on_event: Listener | None = None,
    ) -> AsyncGenerator[Outcome, None]:
        """Run every request through the pool; yield an `Outcome` for each as it ends.

        A request is pulled from `requests` only when the previous one has a place in the pool,
        so a generator of a million prompts costs no more than about twice the pool, and at most
        one request pulled waits for its place. One request's failure is its outcome's `error`;
        the others go on. Outcomes come in completion order, or input order with `ordered=True`;
        while the caller dwells on one, the pool goes on, and at most the pool's size less one
        further outcomes wait for it (each holding its images); while a failed one waits for
        it, nothing more is pulled. Leaving the loop early cancels what is
        in flight: use `contextlib.aclosing(client.map(...))` to have that happen at once rather
        than when the generator is collected.

        With `save_to=` a folder, the folder's image names are read once as the map starts: a
        request whose `id` names a file there, or the same `id` as an earlier request of the map,
        fails with FileExistsError before it is sent. A file put there by someone else later
        is found when the paid image is placed, which then takes the name `{id}_{i}-{key}.{ext}`.
        """
        delivery = Delivery.to(save_to, overwrite=overwrite, timeouts=timeouts, on_event=on_event)
        return self._fanout.map(requests, delivery, ordered=ordered)
