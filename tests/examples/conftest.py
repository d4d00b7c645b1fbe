"""The example web apps, each started once per module with the plugin's fake relay (in a thread
of its own) behind it, and the callers' HTTP session."""

from collections.abc import AsyncIterator

import aiohttp
import pytest
from webapps import App, running


@pytest.fixture(scope="module", params=["fastapi", "aiohttp"])
async def app(request, fake_relay_server, tmp_path_factory) -> AsyncIterator[App]:
    """Each example app, started once per module, with a pool of 4 behind it."""
    folder = tmp_path_factory.mktemp(request.param)
    async with running(request.param, fake_relay_server.url, folder) as started:
        yield started


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The app's callers: no connection limit, a generous timeout (nothing may hang)."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session
