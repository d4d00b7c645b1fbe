"""The fake relay's image host: file URLs that expire, downloads recorded and faulted."""

from __future__ import annotations

import asyncio
import collections
import math
import secrets
import time

import attrs
from aiohttp import web

from ._faults import DOWNLOAD_KINDS, Fault
from ._images import ImageKey, image
from ._records import REQUEST_ID, RecordedDownload, new_request_id, scrubbed_headers
from ._wire import Aborted, hang_up, send, send_fault

__all__ = ["FileHost"]

_FILE_SUFFIX = ".png"


@attrs.frozen
class _File:
    key: ImageKey
    expires_at: float


@attrs.define(eq=False)
class FileHost:
    """Serves `GET /files/<token>.png` for the images a relay answered as URLs."""

    url_ttl: float
    downloads: list[RecordedDownload] = attrs.Factory(list)
    _faults: collections.deque[Fault] = attrs.Factory(collections.deque)
    _files: dict[str, _File] = attrs.Factory(dict)
    _epoch: int = 0

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    def add(self, key: ImageKey) -> str:
        """A new file token for the image `key`, valid for `url_ttl` seconds."""
        token = secrets.token_urlsafe(16) + _FILE_SUFFIX
        self._files[token] = _File(key, time.monotonic() + self.url_ttl)
        return token

    def script(self, *faults: Fault) -> None:
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"expected a Fault, got {fault!r}")
            if fault.kind not in DOWNLOAD_KINDS:
                raise ValueError(f"a {fault.kind} fault does not apply to downloads")
        self._faults.extend(faults)

    def expire(self) -> None:
        for token, file in self._files.items():
            self._files[token] = attrs.evolve(file, expires_at=-math.inf)

    def reset(self) -> None:
        self._epoch += 1
        self._faults.clear()
        self.downloads.clear()
        self._files.clear()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request[REQUEST_ID] = request_id = new_request_id()
        fault = self._faults.popleft() if self._faults else None
        record = RecordedDownload(
            request_id=request_id,
            path=request.path,
            started=time.monotonic(),
            authorization=request.headers.get("Authorization"),
            headers=scrubbed_headers(request, set()),
            fault=fault,
        )
        epoch, index = self._epoch, len(self.downloads)
        self.downloads.append(record)
        status: int | None = None
        try:
            response = await self._answer(request, fault)
            status = response.status
        except (Aborted, ConnectionError):  # we hung up, or the client did: nothing to log
            return web.Response(status=499)  # never sent: the transport is gone
        else:
            return response
        finally:
            if epoch == self._epoch and index < len(self.downloads):
                self.downloads[index] = attrs.evolve(
                    self.downloads[index], status=status, finished=time.monotonic()
                )

    async def _answer(self, request: web.Request, fault: Fault | None) -> web.StreamResponse:
        if fault is not None:
            if fault.kind == "reset":
                hang_up(request, abort=True)
                raise Aborted
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            elif fault.kind in ("status", "html"):
                return await send_fault(request, fault)
        file = self._files.get(request.match_info["name"])
        if file is None:
            return await send(request, 404, "text/plain", [b"No such file.\n"])
        if time.monotonic() >= file.expires_at:
            return await send(request, 410, "text/plain", [b"This link has expired.\n"])
        rendered = await image(file.key)
        truncate = fault.fraction if fault is not None and fault.kind == "truncate" else None
        return await send(request, 200, "image/png", [rendered.png], truncate=truncate)
