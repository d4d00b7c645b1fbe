"""An aiohttp.web backend that makes images with one gemimg_async client shared by every handler.

    export GEMIMG_API_KEY=sk-... GEMIMG_BASE_URL=https://relay.example
    python examples/aiohttp_app.py                  # http://127.0.0.1:8080 (PORT to change)

    POST /images {"prompt": "...", "size": "16:9"}   the image, streamed as it is read
    POST /images?save=1 {...}                       {"paths": [...]}: saved under GEMIMG_SAVE_DIR
    GET  /health                                    the client's pool: in flight, waiting...
    GET  /metrics                                   the client's events counted, Prometheus-style

The client lives in a `cleanup_ctx`: made when the app starts, closed with `aclose(drain=...)`
when it stops (requests already sent are paid for). Errors are answered through
`gi.error_response` by a middleware. The server runs with `handler_cancellation=True`, so a
caller that hangs up cancels its handler, and with it the generation. `EventCounter` is an
example of the events hook feeding metrics.

Settings, from the environment: GEMIMG_API_KEY, GEMIMG_BASE_URL (read by the client itself),
GEMIMG_MAX_CONCURRENCY (8), GEMIMG_POOL_TIMEOUT (seconds a handler waits for a place in the
pool; 10), GEMIMG_SAVE_DIR ("images"), GEMIMG_DRAIN_SECONDS (30), GEMIMG_RESPONSE_FORMAT
("b64_json"), GEMIMG_TRUST_ENV (1: take proxies from HTTPS_PROXY and NO_PROXY).
"""

from __future__ import annotations

import collections
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attrs
from aiohttp import web

import gemimg_async as gi


@dataclass(frozen=True)
class Settings:
    max_concurrency: int = 8
    pool_timeout: float = 10.0
    save_dir: Path = field(default_factory=lambda: Path("images"))
    drain_seconds: float = 30.0
    response_format: gi.ResponseFormat = "b64_json"
    trust_env: bool = False

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        return cls(
            max_concurrency=int(env("GEMIMG_MAX_CONCURRENCY", "8")),
            pool_timeout=float(env("GEMIMG_POOL_TIMEOUT", "10")),
            save_dir=Path(env("GEMIMG_SAVE_DIR", "images")),
            drain_seconds=float(env("GEMIMG_DRAIN_SECONDS", "30")),
            response_format="url" if env("GEMIMG_RESPONSE_FORMAT") == "url" else "b64_json",
            trust_env=env("GEMIMG_TRUST_ENV", "") == "1",
        )


def client_options(settings: Settings) -> dict[str, Any]:
    # pool_timeout: a handler that finds the pool full waits at most this long, then gets
    # PoolTimeoutError (answered 503 with Retry-After) having sent nothing.
    return {
        "max_concurrency": settings.max_concurrency,
        "pool_timeout": settings.pool_timeout,
        "trust_env": settings.trust_env,
    }


class EventCounter:
    """Counts the client's events as Prometheus counters: pass it as `on_event=`, serve
    `render()` at /metrics. Listeners run on the event loop and must be quick: this one adds."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, tuple[tuple[str, str], ...]], float] = collections.defaultdict(
            float
        )

    def add(self, name: str, amount: float = 1, **labels: str) -> None:
        self.counts[name, tuple(sorted(labels.items()))] += amount

    def __call__(self, event: gi.Event) -> None:
        match event:
            case gi.RequestSent():
                self.add("gemimg_requests_sent_total")
            case gi.AnswerReceived(status=status, seconds=seconds):
                self.add("gemimg_answers_total", status=str(status))
                self.add("gemimg_answer_seconds_total", seconds)
            case gi.AttemptFailed(failure=failure, retry_in=retry_in):
                retried = "false" if retry_in is None else "true"
                self.add("gemimg_attempts_failed_total", failure=failure, retried=retried)
            case gi.ImageSaved(byte_size=size):
                self.add("gemimg_images_saved_total")
                self.add("gemimg_image_bytes_total", size or 0)
            case gi.GenerationFinished(error=error):
                self.add("gemimg_generations_total", outcome="ok" if error is None else "error")

    def render(self, stats: gi.ClientStats) -> str:
        """The counters, and the pool's gauges from `stats`, in Prometheus' text format."""
        lines = []
        for (name, labels), value in sorted(self.counts.items()):
            tags = ",".join(f'{key}="{text}"' for key, text in labels)
            lines.append(f"{name}{{{tags}}} {value:g}" if tags else f"{name} {value:g}")
        gauges = ("in_flight", "waiting", "limit", "pool_waits")
        lines += [f"gemimg_pool_{name} {getattr(stats, name)}" for name in gauges]
        return "\n".join(lines) + "\n"


CLIENT = web.AppKey("client", gi.Client)
METRICS = web.AppKey("metrics", EventCounter)
SETTINGS = web.AppKey("settings", Settings)
STREAMING = web.RequestKey("streaming", bool)


def gemimg_client(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        counter = EventCounter()
        client = gi.Client(**client_options(settings), on_event=counter)
        app[CLIENT], app[METRICS] = client, counter
        yield
        await client.aclose(drain=settings.drain_seconds)  # requests sent are paid for

    return context


@web.middleware
async def errors_to_http(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except gi.GemimgError as error:
        if request.get(STREAMING):
            raise  # the status went out with the first bytes: all we can do is hang up
        answer = gi.error_response(error)
        return web.json_response(answer.to_json(), status=answer.status, headers=answer.headers)


async def make_image(request: web.Request) -> web.StreamResponse:
    client, settings = request.app[CLIENT], request.app[SETTINGS]
    ask = await request.json()
    if not isinstance(ask, dict) or not isinstance(ask.get("prompt"), str):
        raise web.HTTPUnprocessableEntity(text='send {"prompt": "...", "size": "16:9"}')
    options: dict[str, Any] = {
        "model": str(ask.get("model", "standard")),
        "size": ask.get("size"),
        "response_format": settings.response_format,
    }
    if request.query.get("save") in ("1", "true"):
        result = await client.generate(ask["prompt"], save_to=settings.save_dir, **options)
        paths = [str(path) for path in result.paths]
        return web.json_response({"paths": paths, "request_id": result.request_id})
    async with client.stream(ask["prompt"], **options) as image:
        response = web.StreamResponse(headers={"Content-Type": image.media_type})
        request[STREAMING] = True
        await response.prepare(request)
        async for chunk in image:
            await response.write(chunk)
        await response.write_eof()
    return response


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pool": attrs.asdict(request.app[CLIENT].stats)})


async def metrics(request: web.Request) -> web.Response:
    text = request.app[METRICS].render(request.app[CLIENT].stats)
    return web.Response(text=text, content_type="text/plain")


def make_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings.from_env()
    app = web.Application(middlewares=[errors_to_http])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(gemimg_client(settings))
    app.router.add_post("/images", make_image)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app


if __name__ == "__main__":
    # handler_cancellation: a caller that hangs up cancels its handler, and the generation
    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=int(os.environ.get("PORT", "8080")),
        handler_cancellation=True,
    )
