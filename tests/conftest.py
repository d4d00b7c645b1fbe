"""One fake relay per test session, on 127.0.0.1; each test gets it freshly reset."""

from collections.abc import AsyncIterator

import pytest

from gemimg_async import Client
from gemimg_async.testing import FakeClock, FakeRelay

API_KEY = "sk-test"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


@pytest.fixture(scope="session")
async def relay_server() -> AsyncIterator[FakeRelay]:
    async with FakeRelay(api_keys=frozenset({API_KEY})) as relay:
        yield relay


@pytest.fixture
def relay(relay_server: FakeRelay) -> FakeRelay:
    relay_server.reset()
    return relay_server


@pytest.fixture(scope="session")
async def noise_relay_server() -> AsyncIterator[FakeRelay]:
    """A relay of incompressible images: a 4K answer is ~67 MB of base64, long enough to cut
    or cancel mid-body."""
    async with FakeRelay(api_keys=frozenset({API_KEY}), image_style="noise") as relay:
        yield relay


@pytest.fixture
def noisy(noise_relay_server: FakeRelay) -> FakeRelay:
    noise_relay_server.reset()
    return noise_relay_server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(relay: FakeRelay, clock: FakeClock) -> AsyncIterator[Client]:
    async with Client(API_KEY, relay.url, clock=clock) as client:
        yield client
