"""A small real HTTP proxy for the network tests, on 127.0.0.1: CONNECT tunnels (https targets)
and plain forwarding (http targets), recording every byte each client sent it."""

import asyncio
import contextlib
from typing import Self

import attrs
import yarl

HOP_BY_HOP = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}


@attrs.define
class Seen:
    """One client connection to the proxy: its first request, and all it sent afterwards
    (a forwarded body, or the bytes of a tunnel)."""

    method: str
    target: str
    headers: dict[str, str]
    raw: bytearray = attrs.Factory(bytearray)


@attrs.define
class HTTPProxy:
    """``async with HTTPProxy() as proxy:`` then ``proxy.url``, ``proxy.seen``."""

    seen: list[Seen] = attrs.Factory(list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task] = attrs.Factory(set)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def saw(self, secret: str) -> bool:
        """Whether `secret` was in anything a client sent the proxy."""
        return any(secret.encode() in seen.raw for seen in self.seen)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *fields = head.decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ", 2)
        headers = {}
        for field in filter(None, fields):
            name, _, value = field.partition(":")
            headers[name.strip().lower()] = value.strip()
        seen = Seen(method, target, headers, bytearray(head))
        self.seen.append(seen)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = yarl.URL(target)
            up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
            kept = [f for f in fields if f and f.partition(":")[0].lower() not in HOP_BY_HOP]
            forwarded = [f"{method} {url.raw_path_qs} HTTP/1.1", *kept, "Connection: close"]
            up_writer.write(("\r\n".join(forwarded) + "\r\n\r\n").encode("latin-1"))
        try:
            await asyncio.gather(_pipe(reader, up_writer, seen.raw), _pipe(up_reader, writer, None))
        finally:
            up_writer.close()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray | None
) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            if record is not None:
                record += chunk
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
