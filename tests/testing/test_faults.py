"""Scripted misbehaviour (`testing._faults`): each `Fault` as the relay acts it out, the answer
shapes of `Fault.quirk`, and the checks on faults; over plain aiohttp.
"""

import base64
import json
import re
import time

import aiohttp
import pytest

from gemimg_async.testing import QUIRKS, FakeRelay, Fault
from helpers import AUTH, body, error_of, generate, png_size, post

pytestmark = pytest.mark.anyio


# --- generation faults -------------------------------------------------------------------------


async def test_status_fault_answers_error_json_with_headers(relay, session):
    """Fault.status answers that status, message, code, Retry-After and extra headers."""
    fault = Fault.status(
        503,
        message="上游繁忙",
        code_field=1003,
        retry_after="2",
        headers={"retry-after-ms": "2000"},
    )
    relay.script(fault)
    status, headers, raw = await post(session, relay, body())
    assert status == 503
    assert headers["Retry-After"] == "2"
    assert headers["retry-after-ms"] == "2000"
    assert error_of(raw) == {"message": "上游繁忙", "type": "server_error", "code": 1003}
    assert relay.requests[0].status == 503
    assert relay.requests[0].fault == fault
    assert (await post(session, relay, body()))[0] == 200


async def test_status_fault_html_page(relay, session):
    """Fault.status(html=True) answers an HTML error page, not JSON."""
    relay.script(Fault.status(502, html=True))
    status, headers, raw = await post(session, relay, body())
    assert status == 502
    assert headers["Content-Type"] == "text/html"
    assert raw.startswith(b"<html>")
    assert b"502 Bad Gateway" in raw


@pytest.mark.parametrize("retry_after", ["1", "Wed, 21 Oct 2015 07:28:00 GMT", "soon", None])
async def test_rate_limited(relay, session, retry_after):
    """Fault.rate_limited answers 429 with Retry-After passed through verbatim, or none."""
    relay.script(Fault.rate_limited(retry_after))
    status, headers, raw = await post(session, relay, body())
    assert status == 429
    assert headers.get("Retry-After") == retry_after
    assert error_of(raw)["type"] == "rate_limit_error"


def test_rate_limited_accepts_numbers():
    """A numeric retry_after becomes its string form."""
    assert Fault.rate_limited(2).retry_after == "2"


@pytest.mark.parametrize("code", [500, 502, 503, 504])
async def test_server_error(relay, session, code):
    """Fault.server_error answers the given 5xx (500 by default) with error JSON."""
    relay.script(Fault.server_error(code) if code != 500 else Fault.server_error())
    status, _, raw = await post(session, relay, body())
    assert status == code
    assert error_of(raw)["type"] == "server_error"


async def test_faults_are_consumed_in_order(relay, session):
    """Scripted faults are used one per request, first in first out, then all is normal."""
    relay.script(Fault.server_error(502), Fault.rate_limited())
    relay.script(Fault.server_error(503))
    assert relay.pending_faults == 3
    statuses = [(await post(session, relay, body()))[0] for _ in range(4)]
    assert statuses == [502, 429, 503, 200]
    assert relay.pending_faults == 0
    assert [r.status for r in relay.requests] == statuses


async def test_a_fault_is_consumed_by_a_rejected_request(relay, session):
    """A request answered 401 still takes the next fault from the queue."""
    relay.script(Fault.server_error())
    assert (await post(session, relay, body(), headers={}))[0] == 401
    assert (await post(session, relay, body()))[0] == 200


async def test_reset_after_body_drops_the_connection(relay, session):
    """Fault.reset() reads the request, then hangs up without a status line."""
    relay.script(Fault.reset())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, relay, body(size="4:3"))
    [record] = relay.requests
    assert record.status is None
    assert record.size == "4:3"
    assert record.finished is not None
    assert (await post(session, relay, body()))[0] == 200


async def test_reset_before_body_drops_the_connection(relay, session):
    """Fault.reset(after_body=False) hangs up before reading the body."""
    relay.script(Fault.reset(after_body=False))
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(session, relay, body(size="4:3"))
    [record] = relay.requests
    assert record.status is None
    assert record.model is None
    assert record.authorized


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.99])
async def test_truncate_sends_part_of_the_body(relay, session, fraction):
    """Fault.truncate sends 200 and the full Content-Length, then part of the body and hangs up."""
    relay.script(Fault.truncate(fraction))
    url = f"{relay.url}/v1/images/generations"
    async with session.post(url, json=body(response_format="b64_json"), headers=AUTH) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 10_000
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert relay.requests[0].status == 200


async def test_delay_slows_one_answer(relay, session):
    """Fault.delay waits that long before answering normally, for one request only."""
    relay.script(Fault.delay(0.3))
    started = time.monotonic()
    assert (await post(session, relay, body()))[0] == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert (await post(session, relay, body()))[0] == 200
    assert time.monotonic() - started < 0.3


async def test_error_body_is_http_200(relay, session):
    """Fault.error_body answers HTTP 200 with only an error object."""
    relay.script(Fault.error_body("内容违规", code="content_policy_violation"))
    status, _, raw = await post(session, relay, body())
    assert status == 200
    assert json.loads(raw) == {"error": {"message": "内容违规", "code": "content_policy_violation"}}


async def test_refusal_has_no_images(relay, session):
    """Fault.refusal answers HTTP 200 with an empty data list."""
    relay.script(Fault.refusal())
    status, _, raw = await post(session, relay, body())
    assert status == 200
    answer = json.loads(raw)
    assert answer["data"] == []
    assert isinstance(answer["created"], int)


async def test_fewer_images(relay, session):
    """Fault.fewer_images(k) answers k of the n images asked."""
    relay.script(Fault.fewer_images(1), Fault.fewer_images(9))
    assert len((await generate(session, relay, n=3))["data"]) == 1
    assert len((await generate(session, relay, n=2))["data"]) == 2


async def test_html_fault_on_generation(relay, session):
    """Fault.html answers 200 text/html instead of JSON."""
    relay.script(Fault.html())
    status, headers, raw = await post(session, relay, body())
    assert status == 200
    assert headers["Content-Type"] == "text/html"
    assert raw.startswith(b"<!DOCTYPE html>")


# --- quirks: odd answer shapes -----------------------------------------------------------------


async def quirk_answer(relay, session, quirk, response_format):
    relay.script(Fault.quirk(quirk))
    status, _, raw = await post(session, relay, body(response_format=response_format))
    assert status == 200
    return raw, json.loads(raw)["data"][0]


async def test_quirk_both_fields(relay, session):
    """both_fields: each item has url and b64_json, the unused one an empty string."""
    _, item = await quirk_answer(relay, session, "both_fields", "url")
    assert item["url"].startswith(relay.url)
    assert item["b64_json"] == ""
    _, item = await quirk_answer(relay, session, "both_fields", "b64_json")
    assert item["url"] == ""
    assert png_size(base64.b64decode(item["b64_json"]))


async def test_quirk_null_sibling(relay, session):
    """null_sibling: the unused field is null."""
    _, item = await quirk_answer(relay, session, "null_sibling", "url")
    assert item["url"].startswith(relay.url)
    assert item["b64_json"] is None
    _, item = await quirk_answer(relay, session, "null_sibling", "b64_json")
    assert item["url"] is None
    assert png_size(base64.b64decode(item["b64_json"]))


async def test_quirk_data_uri_in_url(relay, session):
    """data_uri_in_url: the PNG comes as a data: URI in url, and no file is served."""
    _, item = await quirk_answer(relay, session, "data_uri_in_url", "url")
    assert set(item) == {"url"}
    prefix, _, data = item["url"].partition(",")
    assert prefix == "data:image/png;base64"
    assert png_size(base64.b64decode(data)) == (1024, 1024)


async def test_quirk_data_prefix_b64(relay, session):
    """data_prefix_b64: b64_json starts with data:image/png;base64,."""
    _, item = await quirk_answer(relay, session, "data_prefix_b64", "b64_json")
    prefix, _, data = item["b64_json"].partition(",")
    assert prefix == "data:image/png;base64"
    assert png_size(base64.b64decode(data))


async def test_quirk_b64_when_url_asked(relay, session):
    """b64_when_url_asked: a url request gets b64_json."""
    _, item = await quirk_answer(relay, session, "b64_when_url_asked", "url")
    assert set(item) == {"b64_json"}
    assert png_size(base64.b64decode(item["b64_json"]))


async def test_quirk_escaped_slashes(relay, session):
    """escaped_slashes: every / in the JSON text is written as \\/."""
    for response_format in ("url", "b64_json"):
        raw, item = await quirk_answer(relay, session, "escaped_slashes", response_format)
        assert b"\\/" in raw
        assert re.search(rb"(?<!\\)/", raw) is None
    assert raw.count(b"\\/") == base64.b64encode(base64.b64decode(item["b64_json"])).count(b"/")
    _, item = await quirk_answer(relay, session, "escaped_slashes", "url")
    assert item["url"].startswith(f"{relay.url}/files/")


async def test_quirk_wrapped_b64(relay, session):
    """wrapped_b64: the base64 has a \\n escape every 76 characters."""
    raw, item = await quirk_answer(relay, session, "wrapped_b64", "b64_json")
    assert b"\\n" in raw
    lines = item["b64_json"].split("\n")
    assert all(len(line) == 76 for line in lines[:-1])
    assert 0 < len(lines[-1]) <= 76
    assert png_size(base64.b64decode("".join(lines), validate=True))


def test_every_quirk_is_tested():
    """The quirk tests above cover every name in QUIRKS."""
    tested = {
        name.removeprefix("test_quirk_") for name in globals() if name.startswith("test_quirk_")
    }
    assert tested == set(QUIRKS)


# --- fault values ------------------------------------------------------------------------------


def test_fault_constructors_validate():
    """Fault constructors reject values that make no sense."""
    for make in (
        lambda: Fault.status(200),
        lambda: Fault.status(302),
        lambda: Fault.server_error(404),
        lambda: Fault.truncate(1.0),
        lambda: Fault.truncate(-0.1),
        lambda: Fault.delay(-1),
        lambda: Fault.fewer_images(-1),
        lambda: Fault.quirk("bogus"),
    ):
        with pytest.raises(ValueError):
            make()


def test_faults_are_hashable_values():
    """Faults compare by value, so tests can assert on the fault a record carries."""
    assert Fault.rate_limited("1") == Fault.rate_limited("1")
    assert len({Fault.reset(), Fault.reset(), Fault.reset(after_body=False)}) == 2


def test_script_rejects_wrong_things():
    """script() takes only Faults; script_download() only faults that fit a download."""
    relay = FakeRelay()
    with pytest.raises(TypeError):
        relay.script("429")
    for fault in (Fault.refusal(), Fault.quirk("both_fields"), Fault.error_body("x")):
        with pytest.raises(ValueError):
            relay.script_download(fault)
    assert relay.pending_download_faults == 0
