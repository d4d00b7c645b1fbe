"""The fake relay itself: an aiohttp server on 127.0.0.1 with scripts, records and counters."""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal, Self

import anyio
import attrs
from aiohttp import web

from ._answers import ChatStyle, refusal, render, write
from ._dialects import SIZE_HANDLING, DialectName, Generation, SizeHandling, fields, read
from ._faults import Fault, check_latency
from ._files import FileHost
from ._images import MODELS
from ._records import (
    BODY_SENT,
    REQUEST_ID,
    Flights,
    RecordedDownload,
    RecordedRequest,
    hidden_keys,
    keys,
    new_request_id,
    presented_key,
    scrubbed_headers,
)
from ._wire import Aborted, Invalid, cost_header, framed, hang_up, send, send_error, send_fault

if TYPE_CHECKING:
    from ssl import SSLContext

__all__ = ["FakeRelay", "serve"]

_MAX_BODY_BYTES = 256 * 1024 * 1024
_SHUTDOWN_TIMEOUT = 0.25
_BACKLOG = 1024
_SLOT: web.RequestKey[tuple[int, int]] = web.RequestKey("gemimg_fake_slot", tuple)


@attrs.define(eq=False)
class FakeRelay:
    """A fake relay on the current event loop: ``async with FakeRelay() as relay: relay.url``."""

    api_keys: frozenset[str] = attrs.field(
        default=frozenset({"sk-test"}), converter=keys, repr=hidden_keys
    )
    host: str = "127.0.0.1"
    port: int = 0
    latency: float | Mapping[str, float] = attrs.field(default=0.0, validator=check_latency)
    url_ttl: float = 86_400.0
    image_style: Literal["gradient", "noise"] = attrs.field(
        default="gradient", validator=attrs.validators.in_(("gradient", "noise"))
    )
    extra_models: frozenset[str] = attrs.field(default=frozenset(), converter=keys)
    sizes: SizeHandling = attrs.field(
        default="ratio", validator=attrs.validators.in_(SIZE_HANDLING)
    )
    """How it reads sizes: "ratio" takes a ratio, a pixel size or an image config, the tier
    from the config or the model's name; "pixels" takes only a pixel size of Google's table
    and answers anything else 1:1 at 1K, without a word (as LiteLLM does)."""
    chat_style: ChatStyle = attrs.field(
        default="images", validator=attrs.validators.in_(("images", "markdown", "parts"))
    )
    """Where chat answers put images: `message.images` (LiteLLM, OpenRouter), Markdown in
    `message.content` (new-api), or a list of content parts."""
    chat_urls: bool = False
    """Chat answers link images (http URLs to download) instead of sending data: URLs."""
    ssl: SSLContext | None = attrs.field(default=None, repr=False)
    """A server-side TLS context: the relay then speaks https (its file URLs too)."""
    c2pa: bool = False
    """Its images carry a C2PA manifest (a `caBX` chunk after `IHDR`), as Google's do."""
    body_pause: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    """Seconds between the 1 MiB slices of an answer's body: a slow link to hang up on."""
    response_cost: float | None = None
    """Answers say what they cost in LiteLLM's `x-litellm-response-cost` header: this much
    per image made (none for an answer without images)."""

    requests: list[RecordedRequest] = attrs.field(init=False, factory=list, repr=False)
    _faults: collections.deque[Fault] = attrs.field(
        init=False, factory=collections.deque, repr=False
    )
    _files: FileHost = attrs.field(init=False, repr=False)
    _flights: Flights = attrs.field(init=False, factory=Flights, repr=False)
    _epoch: int = attrs.field(init=False, default=0, repr=False)
    _runner: web.AppRunner | None = attrs.field(init=False, default=None, repr=False)
    _url: str | None = attrs.field(init=False, default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        self._files = FileHost(self.url_ttl)

    @property
    def downloads(self) -> list[RecordedDownload]:
        """Every file download since start or `reset`, in order."""
        return self._files.downloads

    # lifecycle
    async def start(self) -> None:
        """Bind the socket and start answering."""
        if self._runner is not None:
            raise RuntimeError("the fake relay is already started")
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_post("/v1/images/generations", self._handle_images)
        app.router.add_post("/v1/chat/completions", self._handle_chat)
        app.router.add_post("/v1beta/models/{target}", self._handle_gemini)
        app.router.add_get("/files/{name}", self._files.handle, allow_head=False)
        app.on_response_prepare.append(self._stamp_request_id)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            sock = socket.create_server((self.host, self.port), backlog=_BACKLOG)
            try:
                await web.SockSite(runner, sock, backlog=_BACKLOG, ssl_context=self.ssl).start()
            except BaseException:
                sock.close()
                raise
        except BaseException:
            await runner.cleanup()
            raise
        host, port = sock.getsockname()[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
        scheme = "https" if self.ssl is not None else "http"
        self._url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
        self._runner = runner

    async def aclose(self) -> None:
        """Stop answering; requests still being handled are cancelled shortly after."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def url(self) -> str:
        """The base URL, like ``http://127.0.0.1:PORT`` (no ``/v1``)."""
        if self._url is None:
            raise RuntimeError("the fake relay is not started")
        return self._url

    # scripting
    def script(self, *faults: Fault) -> None:
        """Queue *faults* for the next generation requests, one each, in order."""
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"expected a Fault, got {fault!r}")
        self._faults.extend(faults)

    def script_download(self, *faults: Fault) -> None:
        """Queue *faults* for the next file downloads, one each, in order."""
        self._files.script(*faults)

    def expire_files(self) -> None:
        """Make every file URL handed out so far answer 410 Gone."""
        self._files.expire()

    def reset(self) -> None:
        """Forget scripts, records, counters and files, as if freshly started."""
        self._epoch += 1
        self._faults.clear()
        self.requests.clear()
        self._files.reset()
        self._flights.reset()

    # observing
    @property
    def in_flight(self) -> int:
        """Generation requests being handled right now (latency included), until the last byte
        of their answer is sent."""
        return self._flights.now

    @property
    def max_in_flight(self) -> int:
        """The most generation requests handled at once since start or `reset`."""
        return self._flights.most

    @property
    def generation_count(self) -> int:
        """Generation requests received since start or `reset`."""
        return len(self.requests)

    @property
    def download_count(self) -> int:
        """File downloads received since start or `reset`."""
        return len(self.downloads)

    @property
    def pending_faults(self) -> int:
        """Scripted generation faults not consumed yet."""
        return len(self._faults)

    @property
    def pending_download_faults(self) -> int:
        """Scripted download faults not consumed yet."""
        return self._files.pending_faults

    # handlers
    async def _stamp_request_id(self, request: web.Request, response: web.StreamResponse) -> None:
        """Stamp the request id; record the status as it goes out, before the client can have
        read the answer (a relay in another thread is read while its handler still runs)."""
        response.headers.setdefault("x-request-id", request.get(REQUEST_ID) or new_request_id())
        slot = request.get(_SLOT)
        current = self._record_at(*slot) if slot is not None else None
        if slot is not None and current is not None and current.finished is None:
            self.requests[slot[1]] = attrs.evolve(current, status=response.status)

    def _latency(self, model: str) -> float:
        return self.latency.get(model, 0.0) if isinstance(self.latency, Mapping) else self.latency

    async def _handle_images(self, request: web.Request) -> web.StreamResponse:
        return await self._handle_generation(request, "images", None)

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle_generation(request, "chat", None)

    async def _handle_gemini(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].partition(":")
        if method != "generateContent":
            return await send_error(request, 404, "not_found", f"Unknown method {method!r}.")
        return await self._handle_generation(request, "gemini", model)

    async def _handle_generation(
        self, request: web.Request, dialect: DialectName, model: str | None
    ) -> web.StreamResponse:
        request[REQUEST_ID] = request_id = new_request_id()
        leave = request[BODY_SENT] = self._flights.enter()
        fault = self._faults.popleft() if self._faults else None
        presented = presented_key(request, google=dialect == "gemini")
        record = RecordedRequest(
            request_id=request_id,
            started=time.monotonic(),
            dialect=dialect,
            authorized=presented in self.api_keys,
            headers=scrubbed_headers(request, {presented, *self.api_keys}),
            idempotency_key=request.headers.get("Idempotency-Key"),
            fault=fault,
        )
        epoch, index = request[_SLOT] = self._epoch, len(self.requests)
        self.requests.append(record)
        status: int | None = None
        try:
            response = await self._answer_generation(request, record, fault, model, (epoch, index))
            status = response.status
        except (Aborted, ConnectionError):  # we hung up, or the client did: nothing to log
            return web.Response(status=499)  # never sent: the transport is gone
        else:
            return response
        finally:
            leave()
            current = self._record_at(epoch, index)
            if current is not None:
                self.requests[index] = attrs.evolve(
                    current, status=status, finished=time.monotonic()
                )

    def _record_at(self, epoch: int, index: int) -> RecordedRequest | None:
        if epoch != self._epoch or index >= len(self.requests):
            return None
        return self.requests[index]

    async def _answer_generation(
        self,
        request: web.Request,
        record: RecordedRequest,
        fault: Fault | None,
        model: str | None,
        slot: tuple[int, int],
    ) -> web.StreamResponse:
        google = record.dialect == "gemini"
        try:
            generation = await self._accept(request, record, fault, model, slot)
        except Invalid as exc:
            return await send_error(request, exc.status, exc.code, exc.message, google=google)
        delay = fault.seconds if fault is not None and fault.kind == "delay" else 0.0
        await asyncio.sleep(self._latency(generation.model) + delay)
        if fault is not None and fault.kind in ("refusal", "blocked"):
            status, document = refusal(generation.dialect, fault)
            body, cost = [json.dumps(document).encode()], cost_header(self.response_cost, 0)
            return await send(request, status, "application/json", body, headers=cost)
        if fault is not None and fault.kind in ("status", "html", "error_body"):
            return await send_fault(request, fault, google=google)
        quirk = fault.quirk_name if fault is not None else None
        images = await render(
            generation,
            fault,
            style=self.image_style,
            link=lambda key: f"{request.url.origin()}/files/{self._files.add(key)}",
            c2pa=self.c2pa,
        )
        document = write(generation, images.pictures, quirk, chat_style=self.chat_style)
        parts = framed(document, images.payloads, quirk)
        truncate = fault.fraction if fault is not None and fault.kind == "truncate" else None
        cost = cost_header(self.response_cost, sum(not p.draft for p in images.pictures))
        kind, pause = "application/json", self.body_pause
        return await send(request, 200, kind, parts, headers=cost, truncate=truncate, pause=pause)

    async def _accept(
        self,
        request: web.Request,
        record: RecordedRequest,
        fault: Fault | None,
        model: str | None,
        slot: tuple[int, int],
    ) -> Generation:
        """Read, record and check the request: the generation it asks, or Invalid to answer."""
        dialect: DialectName = record.dialect  # type: ignore[assignment]  # set from the route
        if fault is not None and fault.kind == "reset" and not fault.after_body:
            hang_up(request, abort=True)
            raise Aborted
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Invalid("request_too_large", "The body is too large.", status=413) from None
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if self._record_at(*slot) is record:
            self.requests[slot[1]] = record.with_body(body, fields(dialect, body, model))
        if fault is not None and fault.kind == "reset":
            hang_up(request, abort=True)
            raise Aborted
        if not record.authorized and dialect == "gemini":
            raise Invalid("API_KEY_INVALID", "API key not valid. Please pass a valid API key.")
        if not record.authorized:
            raise Invalid("invalid_api_key", "Incorrect API key provided.", status=401)
        return read(
            dialect,
            body,
            model,
            models=frozenset(MODELS) | self.extra_models,
            sizes=self.sizes,
            urls=self.chat_urls,
        )


async def serve(relay: FakeRelay, *, ready: Callable[[str], None] | None = None) -> None:
    """Start *relay*, call ``ready(relay.url)``, and answer until cancelled; then close it."""
    await relay.start()
    try:
        if ready is not None:
            ready(relay.url)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await relay.aclose()
