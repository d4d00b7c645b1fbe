"""`import gemimg_async` loads what a Client needs; the batch tools and `__version__` load on
first use, each name still the object its module defines. Fresh interpreters, since this one has
imported everything already."""

import json
import subprocess
import sys

import pytest

import gemimg_async
from gemimg_async import _LAZY

BATCH_MODULES = {
    "gemimg_async._bulk",
    "gemimg_async._cli",
    "gemimg_async._jobs",
    "gemimg_async._journal",
    "gemimg_async._manifest",
    "gemimg_async._outdir",
    "gemimg_async._progress",
    "gemimg_async._summary",
}


def fresh(code: str) -> object:
    """Run `code` in a new interpreter; the JSON it prints last."""
    done = subprocess.run(  # noqa: S603 - our own interpreter on our own code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_package_leaves_the_batch_modules_out():
    """`import gemimg_async` and making a Client import no batch, manifest, progress or CLI
    module."""
    loaded = fresh(
        "import json, sys, gemimg_async\n"
        "gemimg_async.Client('key', 'https://relay.example')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('gemimg_async'))))"
    )
    assert isinstance(loaded, list)
    assert "gemimg_async._client" in loaded
    assert BATCH_MODULES.isdisjoint(loaded)


@pytest.mark.parametrize("name", sorted(_LAZY))
def test_each_lazy_name_is_its_modules_object(name):
    """A lazily imported name is the very object its private module defines."""
    module = __import__(f"gemimg_async.{_LAZY[name]}", fromlist=[name])
    assert getattr(gemimg_async, name) is getattr(module, name)


def test_from_import_loads_a_lazy_name_on_demand():
    """`from gemimg_async import run_batch` works in a fresh interpreter, loading _bulk then."""
    loaded = fresh(
        "import json, sys\n"
        "from gemimg_async import BatchSummary, run_batch, __version__\n"
        "print(json.dumps([run_batch.__module__, BatchSummary.__module__, __version__,"
        " 'gemimg_async._bulk' in sys.modules]))"
    )
    assert loaded == [
        "gemimg_async._bulk",
        "gemimg_async._summary",
        gemimg_async.__version__,
        True,
    ]


def test_dir_lists_every_exported_name():
    """dir(gemimg_async) shows the lazy names too, as editors and help() expect."""
    assert set(gemimg_async.__all__) <= set(dir(gemimg_async))


def test_an_unknown_name_is_an_attribute_error():
    """A name the package does not have raises AttributeError naming it."""
    with pytest.raises(AttributeError, match="no attribute 'Clinet'"):
        gemimg_async.Clinet  # noqa: B018 - the access under test


def test_a_client_imports_nothing_while_it_generates_and_closes():
    """What a client will import (anyio's asyncio backend among it, some 30 modules) is
    imported when it is made: nothing holds the loop for an import in the middle of traffic
    or as it closes."""
    code = """
import asyncio, json, sys
import aiohttp
import gemimg_async as gi
from gemimg_async.testing import FakeRelay

async def main():
    async with FakeRelay() as relay:
        async with aiohttp.ClientSession() as http:  # the relay's own first answer, made
            async with http.post(f"{relay.url}/v1/images/generations", json={"prompt": "x"},
                                 headers={"Authorization": "Bearer sk-test"}) as answer:
                await answer.read()
        client = gi.Client("sk-test", relay.url)
        before = set(sys.modules)
        await client.generate("a fox", response_format="b64_json")
        await client.generate("a fox")
        await client.aclose()
        return sorted(set(sys.modules) - before)

print(json.dumps(asyncio.run(main())))
"""
    assert fresh(code) == []
