"""Hostile relays: small servers on 127.0.0.1 that misbehave the way the hardening issue found
relays (and the networks in front of them) do.

Each is an attrs class with `start()`, `aclose()`, `url` and `async with`, bound to port 0:

- `ScriptedRelay` (aiohttp.web): answers each generation with the next scripted `Reply`, any
  status, headers and body, streamed in slices or produced lazily (bombs are never held whole);
  a `Reply.before` hook runs once the request is read, before the answer (to break the output
  folder after the request was paid, say). Serves `GET /files/{name}` from `files`.
- `StaleKeepAliveRelay` (raw asyncio): one request per connection, answered with
  `Connection: keep-alive`; the next request's bytes on that connection get it closed unread, as
  a relay whose idle timer fires just as the request arrives.
- `SilentRelay` (raw asyncio): reads a request's head (and its body, unless told not to), writes
  `head` (the start of an answer, or nothing) and then says nothing more, ever.

None of them is a fake of aiohttp: the client under test talks to them over real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Self

import anyio
import attrs
from aiohttp import web

__all__ = [
    "Reply",
    "ScriptedRelay",
    "Seen",
    "SilentRelay",
    "StaleKeepAliveRelay",
    "b64_answer",
    "big_png",
    "error_json",
    "small_png",
]

GENERATIONS = "/v1/images/generations"
SLICE = 256 * 1024


# --- answers -----------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def small_png(width: int = 4, height: int = 3) -> bytes:
    """A valid, tiny grey PNG."""
    rows = (b"\x00" + b"\x80\x80\x80" * width) * height
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", ihdr),
            _chunk(b"IDAT", zlib.compress(rows)),
            _chunk(b"IEND", b""),
        )
    )


def big_png(size: int) -> bytes:
    """A PNG of about `size` bytes, incompressible: a tiny image and a private chunk of noise
    (what the client checks is the signature, the header and the IEND end)."""
    tiny = small_png()
    head, end = tiny[: -len(_chunk(b"IEND", b""))], tiny[-len(_chunk(b"IEND", b"")) :]
    noise = os.urandom(max(size - len(tiny) - 12, 0))
    return head + _chunk(b"nOiS", noise) + end


def b64_answer(*images: bytes, created: Any = 1_700_000_000, **extra: Any) -> bytes:
    """A 200 answer holding `images` as `b64_json` items."""
    data = [{"b64_json": base64.b64encode(image).decode()} for image in images]
    return json.dumps({"created": created, "data": data, **extra}).encode()


def error_json(message: str, code: str | int | None, type_: str = "new_api_error") -> bytes:
    """An OpenAI-shaped error body, as one-api and new-api write it."""
    doc = {"error": {"message": message, "type": type_, "param": "", "code": code}}
    return json.dumps(doc, ensure_ascii=False).encode()


# --- ScriptedRelay -----------------------------------------------------------------------------

BodySource = bytes | Callable[[], AsyncIterator[bytes]]


@attrs.frozen
class Reply:
    """How `ScriptedRelay` answers one generation."""

    status: int = 200
    body: BodySource = b""
    """The body, or a function giving its chunks (for bodies too big to build whole)."""
    content_type: str = "application/json"
    headers: Mapping[str, str] = attrs.field(factory=dict)
    before: Callable[[Seen], None] | None = None
    """Runs once the request is read and recorded, before the answer: the request is paid."""


@attrs.frozen
class Seen:
    """A generation request as the relay read it."""

    body: Any
    idempotency_key: str | None
    request_id: str

    @property
    def prompt(self) -> str | None:
        return self.body.get("prompt") if isinstance(self.body, dict) else None


@attrs.define(eq=False)
class ScriptedRelay:
    """A relay that answers each generation with the next scripted `Reply`, then `default`."""

    default: Reply = Reply(body=b64_answer(small_png()))
    files: dict[str, bytes] = attrs.field(factory=dict)
    requests: list[Seen] = attrs.field(init=False, factory=list)
    downloads: list[str] = attrs.field(init=False, factory=list)
    _replies: deque[Reply] = attrs.field(init=False, factory=deque)
    _runner: web.AppRunner | None = attrs.field(init=False, default=None)
    _url: str | None = attrs.field(init=False, default=None)

    def script(self, *replies: Reply) -> None:
        self._replies.extend(replies)

    @property
    def url(self) -> str:
        assert self._url is not None, "not started"
        return self._url

    def file_url(self, name: str) -> str:
        return f"{self.url}/files/{name}"

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post(GENERATIONS, self._generation)
        app.router.add_get("/files/{name}", self._file)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await self._runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self._url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _generation(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        seen = Seen(
            body,
            request.headers.get("Idempotency-Key"),
            f"req-hostile-{len(self.requests) + 1}",
        )
        self.requests.append(seen)
        reply = self._replies.popleft() if self._replies else self.default
        if reply.before is not None:
            reply.before(seen)
        response = web.StreamResponse(status=reply.status)
        response.content_type = reply.content_type
        response.headers["X-Request-Id"] = seen.request_id
        response.headers.update(reply.headers)
        if isinstance(reply.body, bytes):
            response.content_length = len(reply.body)
        await response.prepare(request)
        for piece in _pieces(reply.body):
            await response.write(piece)
        if not isinstance(reply.body, bytes):
            async for piece in reply.body():
                await response.write(piece)
        await response.write_eof()
        return response

    async def _file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.downloads.append(name)
        data = self.files.get(name)
        if data is None:
            return web.Response(status=404)
        response = web.StreamResponse()
        response.content_type = "image/png"
        response.content_length = len(data)
        await response.prepare(request)
        for piece in _pieces(data):
            await response.write(piece)
        await response.write_eof()
        return response


def _pieces(body: BodySource) -> Iterable[bytes]:
    if not isinstance(body, bytes):
        return ()
    view = memoryview(body)
    return (bytes(view[start : start + SLICE]) for start in range(0, len(view), SLICE))


# --- raw servers -------------------------------------------------------------------------------


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


@attrs.define(eq=False)
class _RawServer:
    """An asyncio server on 127.0.0.1 port 0, one `handle(reader, writer)` per connection."""

    receive_buffer: int | None = None
    """SO_RCVBUF of its sockets: small, a body it does not read stays in the client's buffers."""
    _server: asyncio.Server | None = attrs.field(init=False, default=None)
    _url: str | None = attrs.field(init=False, default=None)
    _tasks: set[asyncio.Task[None]] = attrs.field(init=False, factory=set)

    @property
    def url(self) -> str:
        assert self._url is not None, "not started"
        return self._url

    async def start(self) -> None:
        sock = socket.socket()
        if self.receive_buffer is not None:  # set before listen(): accepted sockets inherit it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        sock.bind(("127.0.0.1", 0))
        self._server = await asyncio.start_server(self._serve, sock=sock)
        self._url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # aclose() ends the handler (asyncio would log a cancelled one as an error)
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


@attrs.define(eq=False)
class StaleKeepAliveRelay(_RawServer):
    """Answers the first request of each connection and keeps it alive; when the next request's
    bytes arrive on it, closes it without reading them (nor answering a byte).

    That is a relay closing an idle keep-alive connection just as the client reuses it, made
    deterministic: the request was never read, so it was never generated nor billed.
    """

    served: list[Any] = attrs.field(init=False, factory=list)
    """The bodies of the requests it read and answered, in order."""
    connections: int = attrs.field(init=False, default=0)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        body = json.loads(await reader.readexactly(_content_length(head)))
        self.served.append(body)
        answer = b64_answer(small_png())
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Connection: keep-alive\r\nKeep-Alive: timeout=60\r\n"
            b"X-Request-Id: req-stale-%d\r\nContent-Length: %d\r\n\r\n%s"
            % (len(self.served), len(answer), answer)
        )
        await writer.drain()
        await reader.read(1)  # the next request's first bytes (or the client's hang-up)...
        writer.transport.close()  # ... get the connection closed, unread


@attrs.define(eq=False)
class SilentRelay(_RawServer):
    """Reads a request's head (and body, when `read_body`), writes `head`, then nothing more.

    With `read_body=False` the upload stalls once the socket buffers fill: a large body is then
    being sent for as long as the client waits. With `head`, the client gets an answer's status
    line, headers (`{n}` in `head` becomes the request's number) and perhaps the body's start.
    """

    head: bytes = b""
    read_body: bool = True
    requests: int = attrs.field(init=False, default=0)
    bodies: dict[int, Any] = attrs.field(init=False, factory=dict)
    """The bodies it read, by request number."""
    arrived: anyio.Event = attrs.field(init=False, factory=anyio.Event)
    """Set once a request's head has been read."""
    answered: int = attrs.field(init=False, default=0)
    """Requests whose `head` was written."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        number = self.requests
        self.arrived.set()
        if self.read_body:
            self.bodies[number] = json.loads(await reader.readexactly(_content_length(head)))
            if self.head:
                writer.write(self.head.replace(b"{n}", str(number).encode()))
                await writer.drain()
                self.answered += 1
            while await reader.read(SLICE):  # until the client hangs up
                pass
        else:
            await anyio.sleep_forever()
