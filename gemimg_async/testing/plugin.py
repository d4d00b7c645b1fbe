"""The pytest plugin for testing applications that use gemimg_async; installed with the package
(the `pytest11` entry point "gemimg_async"; ``-p no:gemimg_async`` turns it off).

Fixtures::

    fake_relay            a FakeRelay, started once per session in a thread with its own event
                          loop, reset for each test (scripts, records, counters and settings)
    gemimg_client         a Client of fake_relay, made and closed on the test's own event loop
                          (anyio's plugin, or pytest-asyncio in strict or auto mode)
    fake_relay_server     (session) the same relay, not reset: for fixtures of a wider scope
                          that need its `url` (an app started once per module, say)
    fake_relay_options    (session) the FakeRelay's options: override it to change them
    gemimg_client_options the Client's options besides key and URL: a FakeClock by default,
                          so retries wait no real time; override it to change them

Because the relay runs in its own thread, `fake_relay` works in synchronous tests too (its
`url` serves any HTTP client) and whichever event loop a test runs on.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import pytest

if TYPE_CHECKING:
    from .._client import Client
    from ._relay import FakeRelay
    from ._threaded import RelayThread

__all__ = [
    "fake_relay",
    "fake_relay_options",
    "fake_relay_server",
    "gemimg_client",
    "gemimg_client_options",
]

_LOOP_SCOPES = ("function", "class", "module", "package", "session")


@pytest.fixture(scope="session")
def fake_relay_options() -> dict[str, Any]:
    """`FakeRelay(**options)` for the session's relay: override in your conftest.py, e.g.
    ``return {"latency": 0.05, "image_style": "noise"}``."""
    return {}


@pytest.fixture(scope="session")
def _gemimg_relay_thread(fake_relay_options: dict[str, Any]) -> Iterator[RelayThread]:
    from ._relay import FakeRelay  # noqa: PLC0415 - imported when used, not at pytest start
    from ._threaded import RelayThread  # noqa: PLC0415

    thread = RelayThread(FakeRelay(**fake_relay_options))
    with thread:
        yield thread


@pytest.fixture(scope="session")
def fake_relay_server(_gemimg_relay_thread: RelayThread) -> FakeRelay:
    """The session's fake relay as it is (not reset): for fixtures of a wider scope."""
    return _gemimg_relay_thread.relay


@pytest.fixture
def fake_relay(_gemimg_relay_thread: RelayThread) -> FakeRelay:
    """The session's fake relay, reset for this test: `script()` faults, read `requests`,
    `downloads`, `max_in_flight`; change `latency` and other settings for this test alone."""
    return _gemimg_relay_thread.reset()


@pytest.fixture
def gemimg_client_options() -> dict[str, Any]:
    """`Client(key, fake_relay.url, **options)`: override to add `max_concurrency`, `dialect`,
    `retry`...; `api_key` picks another of the relay's keys."""
    from .._clock import FakeClock  # noqa: PLC0415

    return {"clock": FakeClock()}


@pytest.fixture
def gemimg_client(request: pytest.FixtureRequest) -> Client:
    """A `Client` of `fake_relay`, made and closed on the event loop the test runs on."""
    return cast("Client", request.getfixturevalue(_client_fixture(request)))


def _client_fixture(request: pytest.FixtureRequest) -> str:
    """The fixture that makes the client on the loop of the plugin that runs this test."""
    if "anyio_backend" in request.fixturenames:
        return "_gemimg_client_anyio"
    marker = request.node.get_closest_marker("asyncio")
    if marker is not None and _ASYNCIO_FIXTURES:
        scope = marker.kwargs.get("loop_scope") or _default_test_loop_scope(request.config)
        return f"_gemimg_client_asyncio_{scope}"
    pytest.fail(
        "gemimg_client is for async tests run by anyio's pytest plugin "
        "(@pytest.mark.anyio) or by pytest-asyncio 0.24 or later (@pytest.mark.asyncio, or its "
        "auto mode); a synchronous test can use fake_relay.url with a client of its own",
        pytrace=False,
    )


def _default_test_loop_scope(config: pytest.Config) -> str:
    try:
        scope = config.getini("asyncio_default_test_loop_scope")
    except ValueError:  # an older pytest-asyncio: tests run on a loop of their own
        return "function"
    return str(scope) if scope in _LOOP_SCOPES else "function"


async def _client(relay: FakeRelay, options: dict[str, Any]) -> AsyncIterator[Client]:
    from .._client import Client  # noqa: PLC0415

    options = dict(options)
    key = options.pop("api_key", None) or min(relay.api_keys)
    async with Client(key, relay.url, **options) as client:
        yield client


@pytest.fixture
async def _gemimg_client_anyio(
    fake_relay: FakeRelay, gemimg_client_options: dict[str, Any]
) -> AsyncIterator[Client]:
    async for client in _client(fake_relay, gemimg_client_options):
        yield client


def _asyncio_fixture(loop_scope: str) -> Callable[..., Any]:
    import pytest_asyncio  # noqa: PLC0415 - only when pytest-asyncio is installed

    async def fixture(
        fake_relay: FakeRelay, gemimg_client_options: dict[str, Any]
    ) -> AsyncIterator[Client]:
        async for client in _client(fake_relay, gemimg_client_options):
            yield client

    name = f"_gemimg_client_asyncio_{loop_scope}"
    fixture.__name__ = fixture.__qualname__ = name
    return pytest_asyncio.fixture(fixture, name=name, loop_scope=loop_scope)  # type: ignore[call-overload,no-any-return]


def _asyncio_fixtures() -> dict[str, Callable[..., Any]]:
    """pytest-asyncio runs a fixture on the loop of the scope it was declared with: one per
    scope, each picked for the tests whose loop has that scope. None without pytest-asyncio, or
    with one older than `loop_scope` (0.24): its tests then get no gemimg_client."""
    if importlib.util.find_spec("pytest_asyncio") is None:
        return {}
    try:
        return {f"_gemimg_client_asyncio_{s}": _asyncio_fixture(s) for s in _LOOP_SCOPES}
    except TypeError:
        return {}


_ASYNCIO_FIXTURES = _asyncio_fixtures()
globals().update(_ASYNCIO_FIXTURES)
