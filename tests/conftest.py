"""Fixtures only (shared helpers are in helpers.py): one fake relay per test session, on
127.0.0.1, that each test gets freshly reset; a client of it; folders to write to; redis-server;
an S3-compatible server (moto) and a bucket of each test's own."""

import importlib.util
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gemimg_async import Client
from gemimg_async.testing import FakeClock, FakeRelay
from helpers import API_KEY, REDIS_INSTALL_HINT, S3_INSTALL_HINT, RedisServer, S3Server


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
def restore_logging() -> Iterator[None]:
    """The CLI's main() sets up the gemimg_async logger: put it back for the other tests."""
    logger = logging.getLogger("gemimg_async")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(relay: FakeRelay, clock: FakeClock) -> AsyncIterator[Client]:
    async with Client(API_KEY, relay.url, clock=clock) as client:
        yield client


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An existing, empty target folder."""
    path = tmp_path / "out"
    path.mkdir()
    return path


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A batch's output folder, not made yet."""
    return tmp_path / "out"


def _redis_server(folder: Path) -> RedisServer:
    """A RedisServer not started yet; the test is skipped where redis-server is missing (and
    fails under CI, whose .ci/run installs it)."""
    executable = shutil.which("redis-server")
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail(REDIS_INSTALL_HINT)
        pytest.skip(REDIS_INSTALL_HINT)
    return RedisServer(executable, folder)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep apart by a prefix of their own."""
    server = _redis_server(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may stop and start again (same port)."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = _redis_server(folder).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3-compatible server (moto) for the session; tests keep apart by a bucket each. The
    test is skipped where moto or s3fs is missing (and fails under CI, whose install has them)."""
    if any(importlib.util.find_spec(name) is None for name in ("moto", "s3fs")):
        if os.environ.get("CI") == "true":
            pytest.fail(S3_INSTALL_HINT)
        pytest.skip(S3_INSTALL_HINT)
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """`s3://BUCKET/out`, in a new bucket on the local S3 server, with the AWS_* variables that
    lead there (dummy credentials) set for this test only."""
    import s3fs  # noqa: PLC0415 - an optional extra: the fixture above skips without it

    for name, value in s3_server.environment.items():
        monkeypatch.setenv(name, value)
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return f"s3://{bucket}/out"
