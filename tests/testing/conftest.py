"""The fake relay's own tests share one relay per module, with an extra model, and a plain
aiohttp session to talk to it.
"""

import aiohttp
import pytest

from gemimg_async.testing import FakeRelay


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
async def shared_relay(anyio_backend):
    async with FakeRelay(extra_models=frozenset({"my-model"})) as relay:
        yield relay


@pytest.fixture
async def relay(shared_relay):
    shared_relay.reset()
    yield shared_relay
    shared_relay.reset()


@pytest.fixture
async def session(anyio_backend):
    async with aiohttp.ClientSession() as session:
        yield session
