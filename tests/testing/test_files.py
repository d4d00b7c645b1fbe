"""The fake relay's image host (`testing._files`): file URLs that expire, and downloads faulted;
over plain aiohttp.
"""

import asyncio
import time

import aiohttp
import pytest

from gemimg_async.testing import FakeRelay, Fault
from helpers import PNG_SIGNATURE, a_file_url, error_of, fetch, generate, png_size

pytestmark = pytest.mark.anyio


# --- files -------------------------------------------------------------------------------------


async def test_url_answer_serves_the_png(relay, session):
    """A url answer points at this server's /files/, which serves image/png with a length."""
    answer = await generate(session, relay, size="9:16")
    assert isinstance(answer["created"], int)
    assert abs(answer["created"] - time.time()) < 60
    [item] = answer["data"]
    assert set(item) == {"url"}
    assert item["url"].startswith(f"{relay.url}/files/")
    assert item["url"].endswith(".png")
    status, headers, data = await fetch(session, item["url"])
    assert status == 200
    assert headers["Content-Type"] == "image/png"
    assert int(headers["Content-Length"]) == len(data)
    assert png_size(data) == (768, 1376)
    assert [d.status for d in relay.downloads] == [200]


async def test_expire_files_answers_410(relay, session):
    """After expire_files() every URL handed out answers 410 with plain text; new ones work."""
    old = (await generate(session, relay))["data"][0]["url"]
    relay.expire_files()
    status, headers, text = await fetch(session, old)
    assert status == 410
    assert headers["Content-Type"] == "text/plain"
    assert b"<" not in text
    assert text.strip()
    new = (await generate(session, relay))["data"][0]["url"]
    assert (await fetch(session, new))[0] == 200
    assert [d.status for d in relay.downloads] == [410, 200]


async def test_url_ttl_expires_files(session):
    """A URL older than url_ttl answers 410."""
    async with FakeRelay(url_ttl=0.05) as relay:
        url = (await generate(session, relay))["data"][0]["url"]
        await asyncio.sleep(0.1)
        assert (await fetch(session, url))[0] == 410


async def test_unknown_file_is_404(relay, session):
    """A file URL the relay never handed out answers 404."""
    status, _, _ = await fetch(session, f"{relay.url}/files/nothing.png")
    assert status == 404


# --- download faults ---------------------------------------------------------------------------


async def test_download_status_fault(relay, session):
    """script_download(Fault.status) answers that status for the next file GET only."""
    url = await a_file_url(relay, session)
    relay.script_download(Fault.status(403, message="AccessDenied"), Fault.status(503, html=True))
    status, _, raw = await fetch(session, url)
    assert status == 403
    assert error_of(raw)["message"] == "AccessDenied"
    status, headers, _ = await fetch(session, url)
    assert status == 503
    assert headers["Content-Type"] == "text/html"
    assert (await fetch(session, url))[0] == 200
    assert [d.status for d in relay.downloads] == [403, 503, 200]


async def test_download_reset(relay, session):
    """Fault.reset drops a file GET; aiohttp retries a GET once, so two resets reach the caller."""
    url = await a_file_url(relay, session)
    relay.script_download(Fault.reset(), Fault.reset())
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(session, url)
    assert [d.status for d in relay.downloads] == [None, None]
    assert (await fetch(session, url))[0] == 200


async def test_download_truncate(relay, session):
    """Fault.truncate on a file sends the full Content-Length but half the PNG."""
    url = await a_file_url(relay, session)
    relay.script_download(Fault.truncate(0.5))
    async with session.get(url) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_download_delay(relay, session):
    """Fault.delay on a file waits, then serves the PNG."""
    url = await a_file_url(relay, session)
    relay.script_download(Fault.delay(0.2))
    started = time.monotonic()
    status, _, data = await fetch(session, url)
    assert time.monotonic() - started >= 0.2
    assert status == 200
    assert png_size(data)


async def test_download_html(relay, session):
    """Fault.html on a file answers 200 text/html instead of the image."""
    url = await a_file_url(relay, session)
    relay.script_download(Fault.html())
    status, headers, raw = await fetch(session, url)
    assert status == 200
    assert headers["Content-Type"] == "text/html"
    assert not raw.startswith(PNG_SIGNATURE)
