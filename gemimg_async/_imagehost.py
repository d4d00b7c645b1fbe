"""HTTP to image hosts: `ImageHost` downloads a result's image URLs on a session of its own,
which never carries the key (see `_transport`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import attrs
import yarl

from ._config import Timeouts
from ._exceptions import DownloadError, ImageExpiredError
from ._network import Network
from ._pacing import Pacer
from ._status import printable
from ._transport import (
    CHUNK_SIZE,
    HEADERS,
    KEEPALIVE_SECONDS,
    Answer,
    SessionOwner,
    request_id_of,
    safe_url,
)
from ._transport_errors import map_aiohttp_errors

__all__ = ["ImageHost"]

log = logging.getLogger("gemimg_async")


@attrs.define
class ImageHost(SessionOwner):
    """The session for image downloads: it never carries the key.

    Once closed (or unpickled with a result) it still downloads, through a one-off session per
    call, so a result can be saved after its client is gone.
    """

    pacer: Pacer = attrs.Factory(Pacer)
    network: Network = attrs.Factory(Network)
    """The client's proxy and trust; never its key, nor the caller's `session=`."""
    _session: aiohttp.ClientSession | None = attrs.field(default=None, repr=False)
    _closed: bool = False

    def __getstate__(self) -> dict[str, Any]:
        return {
            "pacer": Pacer(),
            "network": self.network.portable(),
            "_session": None,
            "_closed": True,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    @asynccontextmanager
    async def download(
        self, url: str, timeouts: Timeouts, *, max_bytes: int
    ) -> AsyncIterator[Answer]:
        """GET an image URL without credentials; yield the 200 answer or raise DownloadError.

        An answer that announces more than `max_bytes` is refused before its body is read.
        """
        timeout = aiohttp.ClientTimeout(
            total=timeouts.total, connect=timeouts.connect, sock_read=timeouts.download
        )
        async with AsyncExitStack() as stack:
            if self._closed:
                session = await stack.enter_async_context(aiohttp.ClientSession(headers=HEADERS))
            else:
                if self._session is None:
                    self._session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(
                            limit=0, keepalive_timeout=KEEPALIVE_SECONDS
                        ),
                        headers=HEADERS,
                    )
                session = self._session
            what = f"GET {safe_url(url)}"
            with map_aiohttp_errors(what, closed=self.is_closed, download_url=url):
                options = self.network.options(yarl.URL(url))
                async with session.get(url, timeout=timeout, **options) as response:
                    log.debug("%s -> %d", what, response.status)
                    _check_download(response, url, max_bytes)
                    yield Answer(
                        response.status,
                        response.headers,
                        request_id_of(response.headers),
                        self.pacer.paced(response.content.iter_chunked(CHUNK_SIZE)),
                    )


def _check_download(response: aiohttp.ClientResponse, url: str, max_bytes: int) -> None:
    if response.status in (403, 404, 410):
        raise ImageExpiredError(
            f"the image URL has expired (it answered {response.status}): relays keep images "
            "about 24 hours, so download them as soon as they are made",
            url=url,
            status=response.status,
        )
    if (response.content_length or 0) > max_bytes:
        raise DownloadError(
            f"the image host announced {response.content_length} bytes, "
            f"over the {max_bytes}-byte cap",
            url=url,
            status=response.status,
        )
    if response.status != 200:  # noqa: PLR2004
        raise DownloadError(
            f"the image host answered {response.status} {printable(response.reason or '')}",
            url=url,
            status=response.status,
        )
