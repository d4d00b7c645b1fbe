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
import attrs

from ._clock import Clock, SystemClock
from ._config import DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_IMAGE_BYTES, RetryPolicy, Timeouts
from ._destination import Destination
from ._dialects import Dialect, SizeStyle, dialect_for
from ._dialects import base_url as relay_base
from ._events import Listener
from ._exceptions import ConfigurationError
from ._fanout import FanOut
from ._generation import Engine
from ._limits import AdaptiveLimit, Pool, RateLimit
from ._models import ImageInput, ImageRequest, Model, ResponseFormat
from ._network import Network
from ._pacing import Pacer
from ._prices import DEFAULT_PRICES, Prices
from ._results import GenerationResult, Outcome
from ._retry import RetryBudget
from ._save import Delivery, Saver
from ._secrets import forgetting
from ._stream import Streaming
from ._transport import ImageHost, Relay

__all__ = ["ENV_API_KEY", "ENV_BASE_URL", "Client", "ClientStats", "GenerateOptions"]

ENV_API_KEY = "GEMIMG_API_KEY"
ENV_BASE_URL = "GEMIMG_BASE_URL"


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
        if not isinstance(prices, Prices):
            raise ConfigurationError(
                f"prices= takes a gi.Prices (Prices.from_file reads a table), not {prices!r:.40}"
            )
        base = relay_base(base_url, allow_insecure_http=allow_insecure_http)
        network = Network.configure(
            proxy=proxy,
            trust_env=trust_env,
            ssl=ssl,
            session=session,
            allow_insecure_http=allow_insecure_http,
        )
        network.check_relay(base)
        speaks = dialect_for(dialect, size_style)
        clock = clock or SystemClock()
        pacer = Pacer()
        limit = AdaptiveLimit(max_concurrency)
        self._engine = Engine(
            relay=Relay(speaks.auth_headers(api_key), timeouts, clock, pacer, network),
            base=base,
            dialect=speaks,
            pool=Pool(limit, RateLimit(rpm, clock) if rpm is not None else None),
            retry=retry,
            budget=RetryBudget(retry.budget_tokens, retry.budget_ratio),
            saver=Saver(
                max_image_bytes, retry, timeouts, clock, ImageHost(pacer, network), metadata
            ),
            clock=clock,
            on_event=on_event,
            prices=prices,
        )
        self._fanout = FanOut(self._engine)

    def __repr__(self) -> str:
        return (
            f"Client(base_url={str(self._engine.base)!r}, "
            f"dialect={self._engine.dialect.name!r}, "
            f"max_concurrency={self._engine.pool.limit.maximum})"
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
                await self._engine.relay.aclose()
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
        pool = self._engine.pool
        return ClientStats(
            max_concurrency=pool.limit.maximum,
            limit=pool.limit.limit,
            in_flight=pool.limit.in_flight,
            waiting=pool.limit.waiting,
            pool_waits=pool.limit.waits,
            rate_waits=pool.rate.waits if pool.rate else 0,
            retry_tokens=self._engine.budget.tokens,
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
        extra_body: Mapping[str, Any] | None = None,
        timeouts: Timeouts | None = None,
        on_event: Listener | None = None,
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
        return await self.send(request, save_to=save_to, timeouts=timeouts, on_event=on_event)

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
    ) -> GenerationResult:
        """Generate what `request` asks, waiting for a place in the pool first."""
        delivery = Delivery.to(save_to, overwrite=overwrite, timeouts=timeouts, on_event=on_event)
        with forgetting():
            return await self._engine.send(request, delivery)

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
        return Streaming(self._engine, request, delivery)

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
        so a generator of a million prompts costs no more than the pool, and at most one request
        pulled waits for its place. One request's failure is its outcome's `error`; the others go
        on. Outcomes come in completion order, or input order with `ordered=True` (holding at
        most twice the pool's size). Leaving the loop early cancels what is in flight: use
        `contextlib.aclosing(client.map(...))` to have that happen at once rather than when the
        generator is collected.
        """
        delivery = Delivery.to(save_to, overwrite=overwrite, timeouts=timeouts, on_event=on_event)
        return self._fanout.map(requests, delivery, ordered=ordered)
