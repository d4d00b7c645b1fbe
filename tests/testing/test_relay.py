"""The fake relay itself (`testing._relay`): its lifecycle, keys, request ids, concurrency and
latency, and reset; over plain aiohttp.
"""

import asyncio
import base64
import re
import time

import aiohttp
import anyio
import pytest

from gemimg_async.testing import FakeRelay, Fault, png, serve
from gemimg_async.testing._images import with_c2pa
from helpers import (
    API_KEY,
    AUTH,
    STANDARD,
    TIER_2K,
    a_file_url,
    body,
    error_of,
    fetch,
    generate,
    png_chunks,
    post,
    wait_for,
)

pytestmark = pytest.mark.anyio


# --- lifecycle ---------------------------------------------------------------------------------


async def test_url_is_base_url_without_v1(relay):
    """The URL is http://127.0.0.1:PORT with a real port and no /v1."""
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", relay.url)
    assert not relay.url.endswith(":0")


async def test_url_before_start_raises():
    """Asking for the URL of a relay that is not started is an error."""
    with pytest.raises(RuntimeError):
        _ = FakeRelay().url


async def test_start_twice_raises():
    """A relay cannot be started twice."""
    async with FakeRelay() as relay:
        with pytest.raises(RuntimeError):
            await relay.start()


async def test_aclose_frees_the_port(session):
    """After aclose() the port refuses connections, and aclose() may be repeated."""
    relay = FakeRelay()
    await relay.start()
    url = relay.url
    await relay.aclose()
    await relay.aclose()
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(session, f"{url}/files/x.png")


async def test_aclose_does_not_wait_for_slow_requests(session):
    """aclose() returns promptly even while a request sleeps through its latency."""
    relay = FakeRelay(latency=30.0)
    await relay.start()
    task = asyncio.ensure_future(post(session, relay, body()))
    await wait_for(lambda: relay.in_flight)
    started = time.monotonic()
    await relay.aclose()
    assert time.monotonic() - started < 2.0
    assert relay.in_flight == 0
    with pytest.raises(aiohttp.ClientError):
        await task


async def test_serve_reports_url_and_stops_on_cancel(session):
    """serve() calls ready(url), answers requests, and closes when cancelled."""
    relay = FakeRelay()
    urls = []
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: serve(relay, ready=urls.append))
        await wait_for(lambda: urls)
        assert urls == [relay.url]
        status, _, _ = await post(session, relay, body())
        assert status == 200
        group.cancel_scope.cancel()
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(session, relay, body())


def test_constructor_validates():
    """Negative latency or body pause and unknown image styles are rejected up front."""
    with pytest.raises(ValueError):
        FakeRelay(latency=-1.0)
    with pytest.raises(ValueError):
        FakeRelay(body_pause=-0.1)
    with pytest.raises(ValueError):
        FakeRelay(latency={STANDARD: -0.5})
    with pytest.raises(ValueError):
        FakeRelay(image_style="plaid")


def test_api_keys_accepts_a_single_string():
    """A lone key string is one key, not a set of characters."""
    assert FakeRelay(api_keys="sk-one").api_keys == frozenset({"sk-one"})


# --- auth --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk-wrong"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": "Bearer "},
        {"Authorization": API_KEY},
    ],
    ids=["missing", "wrong", "basic", "empty", "no-scheme"],
)
async def test_bad_key_is_401(relay, session, headers):
    """A missing, wrong or malformed key answers 401 with the error JSON."""
    status, answer_headers, raw = await post(session, relay, body(), headers=headers)
    assert status == 401
    assert answer_headers["Content-Type"] == "application/json"
    assert error_of(raw) == {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
    }
    assert [r.authorized for r in relay.requests] == [False]


async def test_custom_api_keys(session):
    """Only the configured keys are accepted."""
    async with FakeRelay(api_keys=frozenset({"sk-a", "sk-b"})) as relay:
        for key, expected in (("sk-a", 200), ("sk-b", 200), (API_KEY, 401)):
            headers = {"Authorization": f"Bearer {key}"}
            status, _, _ = await post(session, relay, body(), headers=headers)
            assert status == expected


async def test_bearer_scheme_is_case_insensitive(relay, session):
    """'bearer sk-test' is as good as 'Bearer sk-test'."""
    status, _, _ = await post(
        session, relay, body(), headers={"Authorization": f"bearer {API_KEY}"}
    )
    assert status == 200


# --- request ids -------------------------------------------------------------------------------


async def test_every_response_has_a_unique_request_id(relay, session):
    """Success, 401, 400, 404 and file answers all carry distinct x-request-id headers."""
    ids = []
    for payload, headers in ((body(), AUTH), (body(), {}), (body(n=9), AUTH)):
        _, answer_headers, _ = await post(session, relay, payload, headers=headers)
        ids.append(answer_headers["x-request-id"])
    answer = await generate(session, relay)
    ids.append(relay.requests[-1].request_id)
    for target in (answer["data"][0]["url"], f"{relay.url}/files/no.png", f"{relay.url}/nowhere"):
        async with session.get(target) as response:
            ids.append(response.headers["x-request-id"])
    assert len(set(ids)) == len(ids)
    assert [r.request_id for r in relay.requests] == ids[:4]
    assert relay.downloads[0].request_id == ids[4]


# --- concurrency and latency -------------------------------------------------------------------


async def test_in_flight_counts_concurrent_requests(session):
    """Ten concurrent delayed requests are all in flight at once, then none."""
    async with FakeRelay(latency=0.5) as relay:
        started = time.monotonic()
        tasks = [asyncio.ensure_future(post(session, relay, body())) for _ in range(10)]
        await wait_for(lambda: relay.in_flight == 10)
        results = await asyncio.gather(*tasks)
        assert time.monotonic() - started < 2.5  # one after another would take 5 s
        assert [status for status, _, _ in results] == [200] * 10
        assert relay.in_flight == 0
        assert relay.max_in_flight == 10
        assert relay.generation_count == 10


async def test_latency_per_model(session):
    """A latency mapping delays only the models it names."""
    async with FakeRelay(latency={TIER_2K: 0.3}) as relay:
        started = time.monotonic()
        await generate(session, relay)
        assert time.monotonic() - started < 0.3
        started = time.monotonic()
        await generate(session, relay, model=TIER_2K)
        assert time.monotonic() - started >= 0.3


async def test_body_pause_spaces_the_slices_of_a_large_answer(session):
    """body_pause waits between the 1 MiB slices of a body: a 2K noise answer (~17 MB) takes at
    least its 16 pauses to arrive, whole."""
    async with FakeRelay(image_style="noise", body_pause=0.02) as relay:
        started = time.monotonic()
        answer = await generate(session, relay, model=TIER_2K, response_format="b64_json")
        assert time.monotonic() - started >= 16 * 0.02
    assert len(base64.b64decode(answer["data"][0]["b64_json"])) > 12 * 1024 * 1024


async def test_errors_skip_latency(session):
    """401 and 400 answer at once, without the relay's latency."""
    async with FakeRelay(latency=5.0) as relay:
        started = time.monotonic()
        assert (await post(session, relay, body(), headers={}))[0] == 401
        assert (await post(session, relay, body(n=0)))[0] == 400
        assert time.monotonic() - started < 1.0


# --- reset -------------------------------------------------------------------------------------


async def test_reset_forgets_everything(relay, session):
    """reset() clears scripts, records, counters and files."""
    url = await a_file_url(relay, session)
    await fetch(session, url)
    relay.script(Fault.refusal())
    relay.script_download(Fault.html())
    relay.reset()
    assert relay.requests == []
    assert relay.downloads == []
    assert (relay.pending_faults, relay.pending_download_faults) == (0, 0)
    assert (relay.generation_count, relay.download_count) == (0, 0)
    assert (relay.in_flight, relay.max_in_flight) == (0, 0)
    assert (await fetch(session, url))[0] == 404
    assert len((await generate(session, relay))["data"]) == 1


async def test_reset_while_a_request_is_in_flight(session):
    """A request that finishes after reset() leaves no record and keeps in_flight right."""
    async with FakeRelay(latency=0.2) as relay:
        task = asyncio.ensure_future(post(session, relay, body()))
        await wait_for(lambda: relay.in_flight)
        relay.reset()
        assert relay.max_in_flight == 1
        assert (await task)[0] == 200
        assert relay.requests == []
        assert relay.in_flight == 0


async def test_relays_do_not_share_state(relay, session):
    """Faults and records of one relay never affect another."""
    relay.script(Fault.server_error())
    async with FakeRelay() as other:
        assert (await post(session, other, body()))[0] == 200
        assert other.pending_faults == 0
        assert len(other.requests) == 1
    assert relay.requests == []
    assert (await post(session, relay, body()))[0] == 500


# --- cost and C2PA -----------------------------------------------------------------------------


async def test_response_cost_sends_litellms_header_per_image(session):
    """response_cost=: every 200 answer says what it cost in x-litellm-response-cost, per
    image made (0.0 for a refusal); without it there is no such header."""
    async with FakeRelay(api_keys=API_KEY, response_cost=0.04) as relay:
        relay.script(Fault.delay(0), Fault.refusal())
        _, two, _ = await post(session, relay, body(n=2))
        _, refused, _ = await post(session, relay, body())
    assert two["x-litellm-response-cost"] == "0.08"
    assert refused["x-litellm-response-cost"] == "0.0"
    async with FakeRelay(api_keys=API_KEY) as plain:
        _, headers, _ = await post(session, plain, body())
    assert "x-litellm-response-cost" not in headers


@pytest.mark.parametrize("response_format", ["b64_json", "url"])
async def test_c2pa_marks_every_image_with_a_cabx_chunk(session, response_format):
    """c2pa=True: inline and downloaded images carry a caBX chunk right after IHDR, and are
    otherwise the images it serves without it."""
    async with FakeRelay(api_keys=API_KEY, c2pa=True) as relay:
        doc = await generate(session, relay, response_format=response_format)
        item = doc["data"][0]
        if response_format == "url":
            _, _, data = await fetch(session, item["url"])
        else:
            data = base64.b64decode(item["b64_json"])
    kinds = [kind for kind, _ in png_chunks(data)]
    assert kinds[:2] == [b"IHDR", b"caBX"]
    async with FakeRelay(api_keys=API_KEY) as plain:
        unsigned = base64.b64decode(
            (await generate(session, plain, response_format="b64_json"))["data"][0]["b64_json"]
        )
    assert data == with_c2pa(unsigned)


def test_png_can_carry_a_c2pa_manifest():
    """png(c2pa=True) is a PNG with a caBX chunk after IHDR, for tests of one's own."""
    kinds = [kind for kind, _ in png_chunks(png(4, 4, c2pa=True))]
    assert kinds == [b"IHDR", b"caBX", b"IDAT", b"IEND"]
    late = [kind for kind, _ in png_chunks(with_c2pa(png(), after_data=True))]
    assert late == [b"IHDR", b"IDAT", b"caBX", b"IEND"]
