"""The pytest plugin for users (`gemimg_async.testing.plugin`, entry point `pytest11`): test files
run by pytest in a subprocess, under anyio's plugin, pytest-asyncio (strict and auto) and both
at once, get `fake_relay` (started once, reset per test) and `gemimg_client` (on their loop)."""

import re
import textwrap
import urllib.error
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import gemimg_async.testing.plugin
from gemimg_async.testing import FakeRelay, RelayThread

pytest_plugins = ["pytester"]

ASYNCIO_INI = """
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
{extra}
"""
ANYIO_INI = """
[pytest]
filterwarnings = error
"""

TESTS = """
import urllib.request

import pytest

import gemimg_async as gi
from gemimg_async.testing import Fault

{setup}


{mark}
async def test_generates_against_the_relay(gemimg_client, fake_relay):
    result = await gemimg_client.generate("a fox", response_format="b64_json")
    assert result.images[0].data.startswith(b"\\x89PNG")
    assert [(r.prompt, r.authorized) for r in fake_relay.requests] == [("a fox", True)]


{mark}
async def test_records_are_reset_and_faults_scripted(gemimg_client, fake_relay):
    assert fake_relay.requests == []
    fake_relay.script(Fault.rate_limited("30"))  # the FakeClock: no real 30 s wait
    await gemimg_client.generate("a fox")
    assert [r.status for r in fake_relay.requests] == [429, 200]


{mark}
async def test_a_setting_changed_here(fake_relay):
    fake_relay.latency = 30.0


def test_settings_are_back_and_sync_code_can_call_it(fake_relay):
    assert fake_relay.latency == 0.0
    request = urllib.request.Request(
        f"{{fake_relay.url}}/v1/images/generations",
        data=b'{{"model": "gemini-3-pro-image-preview", "prompt": "a fox"}}',
        headers={{"Authorization": "Bearer sk-test", "Content-Type": "application/json"}},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200
    assert fake_relay.generation_count == 1
"""


ANYIO_SETUP = """
@pytest.fixture
def anyio_backend():
    return "asyncio"
"""
SYNC_TEST = "def test_sync(gemimg_client):\n    pass\n"


def run(pytester, *args: str, ini: str = ANYIO_INI, **sources: str):
    pytester.makeini(ini)
    pytester.makepyfile(**{name: textwrap.dedent(source) for name, source in sources.items()})
    return pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", *args, timeout=120)


def test_the_plugin_is_installed_as_a_pytest11_entry_point():
    """Installing the package registers the plugin with pytest: no pytest_plugins line needed."""
    [entry] = [e for e in entry_points(group="pytest11") if e.name == "gemimg_async"]
    assert entry.load() is gemimg_async.testing.plugin


def readme_example() -> str:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    [example] = [block for block in blocks if "gemimg_client" in block]
    return example


def test_under_anyio(pytester):
    """With anyio's plugin (pytest-asyncio off), the fixtures work in async and sync tests, and
    the README's example passes as written; a synchronous test asking for gemimg_client fails
    with what to do instead."""
    source = TESTS.format(setup=ANYIO_SETUP, mark="@pytest.mark.anyio")
    sources = {"test_app": source, "test_sync": SYNC_TEST, "test_readme": readme_example()}
    result = run(pytester, "-p", "no:asyncio", **sources)
    result.assert_outcomes(passed=5, errors=1)
    result.stdout.fnmatch_lines(["*gemimg_client is for async tests*"])


def test_under_pytest_asyncio_strict_beside_anyio(pytester):
    """pytest-asyncio in strict mode runs @pytest.mark.asyncio tests with the client on their
    loop (a module-scoped loop included) while anyio's plugin, loaded too, runs its own."""
    source = TESTS.format(setup="", mark="@pytest.mark.asyncio") + textwrap.dedent("""
        @pytest.mark.asyncio(loop_scope="module")
        async def test_on_a_module_loop(gemimg_client, fake_relay):
            await gemimg_client.generate("a fox")
            assert fake_relay.generation_count == 1

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_run_by_anyio(gemimg_client, fake_relay):
            await gemimg_client.generate("a fox")
            assert fake_relay.generation_count == 1
    """)
    result = run(pytester, ini=ASYNCIO_INI.format(extra=""), test_app=source)
    result.assert_outcomes(passed=6)


def test_under_pytest_asyncio_auto(pytester):
    """pytest-asyncio in auto mode runs unmarked async tests with the client on their loop."""
    ini = ASYNCIO_INI.format(extra="asyncio_mode = auto")
    source = TESTS.format(setup="", mark="")
    result = run(pytester, "-p", "no:anyio", ini=ini, test_app=source)
    result.assert_outcomes(passed=4)


def test_the_options_fixtures_change_the_relay_and_the_client(pytester):
    """Overriding fake_relay_options and gemimg_client_options changes the relay (its keys,
    here) and the client (its key and pool)."""
    source = textwrap.dedent("""
        import pytest

        pytestmark = pytest.mark.anyio

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.fixture(scope="session")
        def fake_relay_options():
            return {"api_keys": {"sk-mine", "sk-other"}, "latency": 0.01}

        @pytest.fixture
        def gemimg_client_options():
            return {"api_key": "sk-other", "max_concurrency": 2}

        async def test_options(gemimg_client, fake_relay):
            assert gemimg_client.stats.max_concurrency == 2
            await gemimg_client.generate("a fox")
            assert fake_relay.requests[0].authorized
            assert fake_relay.latency == 0.01
    """)
    result = run(pytester, "-p", "no:asyncio", test_app=source)
    result.assert_outcomes(passed=1)


def test_a_relay_thread_serves_synchronous_code_and_resets_its_settings():
    """RelayThread runs a relay on a loop of its own; reset() forgets records and puts back the
    settings it started with; stop() ends the thread."""
    thread = RelayThread(FakeRelay(latency=0.0))
    with thread as relay:
        assert relay.url.startswith("http://127.0.0.1:")
        relay.latency = 3.0
        relay.image_style = "noise"
        assert thread.reset() is relay
        assert (relay.latency, relay.image_style) == (0.0, "gradient")
        url = relay.url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/files/x.png", timeout=5)  # noqa: S310 - our own server
