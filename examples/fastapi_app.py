"""A FastAPI backend that makes images with one gemimg_async client shared by every handler.

    pip install 'gemimg-async[web]'
    export GEMIMG_API_KEY=sk-... GEMIMG_BASE_URL=https://relay.example
    uvicorn fastapi_app:app --app-dir examples

    POST /images {"prompt": "...", "size": "16:9"}   the image, streamed as it is read
    POST /images?save=1 {...}                       {"paths": [...]}: saved under GEMIMG_SAVE_DIR
    GET  /health                                    the client's pool: in flight, waiting...

The client is made when the app starts (the lifespan) and closed when it stops, with
`aclose(drain=...)`: requests already sent are paid for, so shutdown waits for them a while.
Errors are answered through `gi.error_response` (422, 429 with Retry-After, 503, 502...). A
caller that hangs up cancels its generation: uvicorn lets a handler run on after its caller
left, so the handler watches for the disconnect itself. Every event the client emits is logged
(`log_event`): an example of the events hook feeding a log pipeline.

Settings, from the environment: GEMIMG_API_KEY, GEMIMG_BASE_URL (read by the client itself),
GEMIMG_MAX_CONCURRENCY (8), GEMIMG_POOL_TIMEOUT (seconds a handler waits for a place in the
pool; 10), GEMIMG_SAVE_DIR ("images"), GEMIMG_DRAIN_SECONDS (30), GEMIMG_RESPONSE_FORMAT
("b64_json"), GEMIMG_TRUST_ENV (1: take proxies from HTTPS_PROXY and NO_PROXY), GEMIMG_REDIS_URL
(share the limits with every worker through Redis: `uvicorn --workers 8`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import attrs
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

import gemimg_async as gi

log = logging.getLogger("fastapi_app")
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    max_concurrency: int = 8
    pool_timeout: float = 10.0
    save_dir: Path = field(default_factory=lambda: Path("images"))
    drain_seconds: float = 30.0
    response_format: gi.ResponseFormat = "b64_json"
    trust_env: bool = False
    redis_url: str | None = None

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
            redis_url=env("GEMIMG_REDIS_URL") or None,
        )


def client_options(settings: Settings) -> dict[str, Any]:
    # pool_timeout: a handler that finds the pool full waits at most this long, then gets
    # PoolTimeoutError (answered 503 with Retry-After) having sent nothing.
    return {
        "max_concurrency": settings.max_concurrency,
        "pool_timeout": settings.pool_timeout,
        "trust_env": settings.trust_env,
    }


def log_event(event: gi.Event) -> None:
    """One log line per thing the client does, with ids and timings (events hold no key)."""
    match event:
        case gi.RequestSent(attempt=attempt, idempotency_key=key):
            log.info("gemimg request sent: attempt %d, idempotency key %s", attempt, key)
        case gi.AnswerReceived(status=status, request_id=request_id, seconds=seconds):
            log.info("gemimg answer %d after %.2f s (request id %s)", status, seconds, request_id)
        case gi.AttemptFailed(failure=failure, error=error, retry_in=retry_in):
            then = "no retry" if retry_in is None else f"retry in {retry_in:.1f} s"
            log.warning("gemimg attempt failed (%s): %s; %s", failure, error, then)
        case gi.ImageSaved(path=path, byte_size=size):
            log.info("gemimg image saved: %s (%s bytes)", path, size)
        case gi.GenerationFinished(error=None, images=images, timings=timings):
            log.info("gemimg generation done: %d image(s), %.2f s queued", images, timings.queued)
        case gi.GenerationFinished(error=error, request_ids=ids):
            log.warning("gemimg generation failed: %s (request ids %s)", error, ids)


class ImageAsk(BaseModel):
    prompt: str
    size: str | None = None
    model: str = "standard"


class CallerLeft(Exception):  # noqa: N818 - an event, not an error
    """The caller hung up before its answer was ready."""


async def unless_caller_leaves(request: Request, work: Awaitable[T]) -> T:
    """`await work`, cancelled if the caller disconnects first (then CallerLeft)."""
    done: list[T] = []
    failed: list[Exception] = []
    async with anyio.create_task_group() as tasks:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            tasks.cancel_scope.cancel()

        tasks.start_soon(watch)
        try:
            done.append(await work)
        except Exception as error:  # noqa: BLE001 - raised below as itself, not in a group
            failed.append(error)
        tasks.cancel_scope.cancel()
    if failed:
        raise failed[0]
    if not done:
        raise CallerLeft
    return done[0]


async def hand_on(image: gi.ImageStream, stack: contextlib.AsyncExitStack) -> AsyncIterator[bytes]:
    """The image's bytes as they are read; the stream is closed however the response ends."""
    try:
        async for chunk in image:
            yield chunk
    finally:
        await stack.aclose()


def make_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Under `uvicorn --workers N`, every worker makes its own limiter: they meet in Redis,
        # so max_concurrency and rpm hold for all the workers together.
        limiter = gi.RedisLimiter(settings.redis_url) if settings.redis_url else None
        client = gi.Client(**client_options(settings), limiter=limiter, on_event=log_event)
        app.state.client = client
        try:
            yield
        finally:  # requests already sent are paid for: let them finish, for a while
            await client.aclose(drain=settings.drain_seconds)
            if limiter is not None:
                await limiter.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(gi.GemimgError)
    async def answer_error(request: Request, error: Exception) -> Response:
        answer = gi.error_response(error)
        if answer.status >= 500:  # noqa: PLR2004 - ours to look into; the caller sees little
            log.error("%s %s failed: %r", request.method, request.url.path, error)
        return JSONResponse(answer.to_json(), status_code=answer.status, headers=answer.headers)

    @app.exception_handler(CallerLeft)
    async def caller_left(_request: Request, _error: Exception) -> Response:
        return Response(status_code=499)  # nobody is listening

    @app.post("/images")
    async def make_image(ask: ImageAsk, request: Request, save: bool = False) -> Response:
        client: gi.Client = request.app.state.client
        options: dict[str, Any] = {
            "model": ask.model,
            "size": ask.size,
            "response_format": settings.response_format,
        }
        if save:
            made = client.generate(ask.prompt, save_to=settings.save_dir, **options)
            result = await unless_caller_leaves(request, made)
            paths = [str(path) for path in result.paths]
            return JSONResponse({"paths": paths, "request_id": result.request_id})
        stack = contextlib.AsyncExitStack()
        stream = client.stream(ask.prompt, **options)
        image = await unless_caller_leaves(request, stack.enter_async_context(stream))
        return StreamingResponse(hand_on(image, stack), media_type=image.media_type)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        stats: gi.ClientStats = request.app.state.client.stats
        return {"status": "ok", "pool": attrs.asdict(stats)}

    return app


app = make_app()

if __name__ == "__main__":
    import uvicorn

    logging.basicConfig(level=logging.INFO)
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
