import asyncio
import base64
import io
import json
import re
import struct
import time
import zlib

import aiohttp
import anyio
import pytest

from gemimg_async import testing
from gemimg_async.testing import (
    MODELS,
    QUIRKS,
    RATIOS,
    FakeRelay,
    Fault,
    _images,
    pixel_size,
    serve,
)

pytestmark = pytest.mark.anyio

KEY = "sk-test"
STANDARD = "gemini-3-pro-image-preview"
TIER_2K = "gemini-3-pro-image-preview-2k"
TIER_4K = "gemini-3-pro-image-preview-4k"
AUTH = {"Authorization": f"Bearer {KEY}"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def body(**fields):
    return {"model": STANDARD, "prompt": "a red fox in the snow", **fields}


async def post(session, relay, payload, *, headers=AUTH):
    """POST a generation; return (status, headers, raw body)."""
    data = io.BytesIO(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    url = f"{relay.url}/v1/images/generations"
    async with session.post(url, data=data, headers=headers) as response:
        return response.status, response.headers, await response.read()


async def generate(session, relay, **fields):
    """POST a valid generation and return the parsed 200 answer."""
    status, _, raw = await post(session, relay, body(**fields))
    assert status == 200, raw
    return json.loads(raw)


async def fetch(session, url, *, headers=None):
    async with session.get(url, headers=headers) as response:
        return response.status, response.headers, await response.read()


async def eventually(predicate):
    """Wait up to 5 s for predicate() to hold."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def png_size(data):
    """Check the PNG signature and IHDR; return (width, height)."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 2)
    return width, height


def png_chunks(data):
    """Split a PNG into (kind, payload) chunks, checking every CRC."""
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        payload = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        chunks.append((kind, payload))
        offset += 12 + length
    return chunks


def error_of(raw):
    parsed = json.loads(raw)
    assert set(parsed) == {"error"}
    return parsed["error"]


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
    await eventually(lambda: relay.in_flight)
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
        await eventually(lambda: urls)
        assert urls == [relay.url]
        status, _, _ = await post(session, relay, body())
        assert status == 200
        group.cancel_scope.cancel()
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(session, relay, body())


def test_constructor_validates():
    """Negative latency and unknown image styles are rejected up front."""
    with pytest.raises(ValueError):
        FakeRelay(latency=-1.0)
    with pytest.raises(ValueError):
        FakeRelay(latency={STANDARD: -0.5})
    with pytest.raises(ValueError):
        FakeRelay(image_style="plaid")


def test_fake_clock_is_reexported():
    """The client's FakeClock is importable from gemimg_async.testing."""
    assert "FakeClock" in testing.__all__
    assert testing.FakeClock().monotonic() == testing.FakeClock().monotonic()


def test_all_is_sorted():
    """__all__ is sorted and names only what exists."""
    assert testing.__all__ == sorted(testing.__all__, key=lambda n: (not n.isupper(), n))
    assert all(hasattr(testing, name) for name in testing.__all__)


def test_api_keys_accepts_a_single_string():
    """A lone key string is one key, not a set of characters."""
    assert FakeRelay(api_keys="sk-one").api_keys == frozenset({"sk-one"})


# --- auth --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk-wrong"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer "},
        {"Authorization": KEY},
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
        for key, expected in (("sk-a", 200), ("sk-b", 200), (KEY, 401)):
            headers = {"Authorization": f"Bearer {key}"}
            status, _, _ = await post(session, relay, body(), headers=headers)
            assert status == expected


async def test_bearer_scheme_is_case_insensitive(relay, session):
    """'bearer sk-test' is as good as 'Bearer sk-test'."""
    status, _, _ = await post(session, relay, body(), headers={"Authorization": f"bearer {KEY}"})
    assert status == 200


# --- validation --------------------------------------------------------------------------------

SIXTEEN_BYTES = base64.b64encode(b"\x89PNG0123456789ab").decode()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not json", "invalid_json"),
        ([1, 2], "invalid_json"),
        ({"prompt": "x"}, "missing_model"),
        (body(model="dall-e-3"), "invalid_model"),
        (body(model=3), "invalid_model"),
        ({"model": STANDARD}, "missing_prompt"),
        (body(prompt=""), "invalid_prompt"),
        (body(prompt="   "), "invalid_prompt"),
        (body(prompt=["x"]), "invalid_prompt"),
        (body(size="7:3"), "invalid_size"),
        (body(size="1024x1024"), "invalid_size"),
        (body(size=169), "invalid_size"),
        (body(response_format="png"), "invalid_response_format"),
        (body(n=0), "invalid_n"),
        (body(n=5), "invalid_n"),
        (body(n="2"), "invalid_n"),
        (body(n=True), "invalid_n"),
        (body(n=1.5), "invalid_n"),
        (body(image=42), "invalid_image"),
        (body(image=[42]), "invalid_image"),
        (body(image="ftp://example.com/a.png"), "invalid_image"),
        (body(image="https://"), "invalid_image"),
        (body(image="example.com/a.png"), "invalid_image"),
        (body(image=f"data:image/bmp;base64,{SIXTEEN_BYTES}"), "invalid_image"),
        (body(image=f"data:image/png,{SIXTEEN_BYTES}"), "invalid_image"),
        (body(image="data:image/png;base64,@@@@"), "invalid_image"),
        (body(image="data:image/png;base64,"), "invalid_image"),
        (body(image=["https://example.com/a.png"] * 15), "too_many_images"),
    ],
)
async def test_invalid_request_is_400(relay, session, payload, code):
    """Each kind of invalid body answers 400 with its own error code."""
    status, headers, raw = await post(session, relay, payload)
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    error = error_of(raw)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["message"]
    assert relay.requests[0].status == 400


async def test_inline_image_over_7mb_is_400(relay, session):
    """An inline image over 7 MB answers 400 image_too_large."""
    big = base64.b64encode(bytes(7 * 1024 * 1024 + 1)).decode()
    status, _, raw = await post(session, relay, body(image=f"data:image/png;base64,{big}"))
    assert status == 400
    assert error_of(raw)["code"] == "image_too_large"


@pytest.mark.parametrize(
    "fields",
    [
        {"size": "16x9"},
        {"size": "16:9"},
        {"size": None, "n": None, "response_format": None, "image": None},
        {"n": 4},
        {"model": "my-model"},
        {"image": f"data:image/jpeg;base64,{SIXTEEN_BYTES}"},
        {"image": [f"data:image/{kind};base64,{SIXTEEN_BYTES}" for kind in ("png", "webp", "gif")]},
        {"image": ["https://example.com/a.png"] * 14},
        {"image": "http://example.com/a.png"},
        {"prompt": "请为黑客帝国设计一张高品质的3D海报"},
    ],
)
async def test_valid_variants_are_accepted(relay, session, fields):
    """Documented variants (x ratios, nulls, n up to 4, data URIs, 14 URLs) answer 200."""
    answer = await generate(session, relay, **fields)
    assert len(answer["data"]) == (fields.get("n") or 1)


# --- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        (STANDARD, None, (1024, 1024)),
        (STANDARD, "16:9", (1024, 576)),
        (STANDARD, "9:16", (576, 1024)),
        (STANDARD, "3:2", (1024, 683)),
        (STANDARD, "4:5", (819, 1024)),
        (STANDARD, "21:9", (1024, 439)),
        ("my-model", "4:3", (1024, 768)),
        (TIER_2K, "1:1", (2048, 2048)),
        (TIER_2K, "3:4", (1536, 2048)),
        (TIER_4K, "16:9", (4096, 2304)),
        (TIER_4K, "1:1", (4096, 4096)),
    ],
)
async def test_pixel_size_follows_tier_and_ratio(relay, session, model, size, expected):
    """The PNG's IHDR has the tier's long side, the other side from the ratio."""
    answer = await generate(session, relay, model=model, size=size, response_format="b64_json")
    assert png_size(base64.b64decode(answer["data"][0]["b64_json"])) == expected


def test_pixel_size_helper():
    """pixel_size() gives the documented shapes and rejects unknown ratios."""
    assert pixel_size(STANDARD) == (1024, 1024)
    assert pixel_size(TIER_4K, "9x16") == (2304, 4096)
    for ratio in RATIOS:
        assert max(pixel_size(TIER_2K, ratio)) == MODELS[TIER_2K]
    with pytest.raises(ValueError):
        pixel_size(STANDARD, "2:1")


async def test_png_is_well_formed(relay, session):
    """The PNG has valid CRCs, one IHDR/IDAT/IEND, and rows of filter 0 RGB."""
    answer = await generate(session, relay, size="16:9", response_format="b64_json")
    data = base64.b64decode(answer["data"][0]["b64_json"])
    chunks = png_chunks(data)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    raw = zlib.decompress(chunks[1][1])
    width, height = png_size(data)
    row = width * 3 + 1
    assert len(raw) == height * row
    assert all(raw[y * row] == 0 for y in range(height))
    assert len(data) < 100_000  # a gradient compresses well


async def test_different_prompts_give_different_images(relay, session):
    """Different prompts get different colours; one prompt always the same image."""

    async def image(prompt):
        answer = await generate(session, relay, prompt=prompt, response_format="b64_json")
        return answer["data"][0]["b64_json"]

    assert await image("a cat") == await image("a cat")
    assert len({await image(p) for p in ("a cat", "a dog", "a ship", "a tree")}) >= 3


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
    assert png_size(data) == (576, 1024)
    assert [d.status for d in relay.downloads] == [200]


async def test_b64_answer_holds_the_png(relay, session):
    """A b64_json answer holds the base64 of a PNG and nothing else."""
    answer = await generate(session, relay, response_format="b64_json")
    [item] = answer["data"]
    assert set(item) == {"b64_json"}
    assert png_size(base64.b64decode(item["b64_json"], validate=True)) == (1024, 1024)
    assert relay.downloads == []


async def test_n_images_are_distinct(relay, session):
    """n=3 answers three different images at three different URLs."""
    answer = await generate(session, relay, n=3)
    urls = [item["url"] for item in answer["data"]]
    assert len(set(urls)) == 3
    images = {(await fetch(session, url))[2] for url in urls}
    assert len(images) == 3


async def test_noise_4k_is_big_and_incompressible(session):
    """The noise style makes a 4K 16:9 PNG of about 28 MB, served whole as url and b64_json."""
    async with FakeRelay(image_style="noise") as relay:
        answer = await generate(
            session, relay, model=TIER_4K, size="16:9", response_format="b64_json"
        )
        data = base64.b64decode(answer["data"][0]["b64_json"])
        assert png_size(data) == (4096, 2304)
        assert 28_000_000 < len(data) < 29_000_000
        answer = await generate(session, relay, model=TIER_4K, size="16:9")
        status, _, served = await fetch(session, answer["data"][0]["url"])
        assert status == 200
        assert served == data


def test_image_cache_is_bounded_by_bytes():
    """The image cache evicts least recently used entries beyond its byte budget."""
    cache = _images._ImageCache(max_bytes=1000)
    keys = [_images.ImageKey(i, 1, "gradient", 0) for i in range(4)]
    for key in keys:
        cache.put(key, _images.Rendered(bytes(200)))
    assert cache.get(keys[0]) is None
    assert all(cache.get(key) is not None for key in keys[2:])


# --- request ids, files ------------------------------------------------------------------------


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


# --- download faults ---------------------------------------------------------------------------


async def a_file_url(relay, session):
    return (await generate(session, relay))["data"][0]["url"]


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


# --- concurrency and latency -------------------------------------------------------------------


async def test_in_flight_counts_concurrent_requests(session):
    """Ten concurrent delayed requests are all in flight at once, then none."""
    async with FakeRelay(latency=0.5) as relay:
        started = time.monotonic()
        tasks = [asyncio.ensure_future(post(session, relay, body())) for _ in range(10)]
        await eventually(lambda: relay.in_flight == 10)
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


async def test_errors_skip_latency(session):
    """401 and 400 answer at once, without the relay's latency."""
    async with FakeRelay(latency=5.0) as relay:
        started = time.monotonic()
        assert (await post(session, relay, body(), headers={}))[0] == 401
        assert (await post(session, relay, body(n=0)))[0] == 400
        assert time.monotonic() - started < 1.0


# --- records -----------------------------------------------------------------------------------


async def test_request_record_fields(relay, session):
    """A record holds the request's fields, key, timing, status and request id."""
    headers = {**AUTH, "Idempotency-Key": "job-42"}
    images = ["https://example.com/a.png", f"data:image/png;base64,{SIXTEEN_BYTES}"]
    payload = body(size="3:2", n=2, response_format="b64_json", image=images)
    status, answer_headers, _ = await post(session, relay, payload, headers=headers)
    assert status == 200
    [record] = relay.requests
    assert record.model == STANDARD
    assert record.prompt == "a red fox in the snow"
    assert (record.size, record.n, record.response_format) == ("3:2", 2, "b64_json")
    assert record.image_count == 2
    assert record.images == tuple(images)
    assert record.idempotency_key == "job-42"
    assert record.authorized
    assert record.request_id == answer_headers["x-request-id"]
    assert record.status == 200
    assert record.fault is None
    assert record.started <= record.finished
    assert record.headers["idempotency-key"] == "job-42"


async def test_absent_fields_are_recorded_as_none(relay, session):
    """Fields the client did not send are None in the record, not defaults."""
    await generate(session, relay)
    [record] = relay.requests
    assert (record.size, record.n, record.response_format) == (None, None, None)
    assert record.idempotency_key is None
    assert record.image_count == 0


async def test_records_never_hold_the_key(relay, session):
    """Neither the right key nor a wrong one is stored anywhere in the records."""
    for key in (KEY, "sk-wrong-secret"):
        headers = {"Authorization": f"Bearer {key}", "X-Api-Key": key}
        await post(session, relay, body(), headers=headers)
    for record in relay.requests:
        assert "authorization" not in record.headers
        assert record.headers["x-api-key"] == "<redacted>"
    assert KEY not in repr(relay.requests)
    assert "sk-wrong-secret" not in repr(relay.requests)
    assert KEY not in repr(relay)


async def test_download_record_shows_authorization(relay, session):
    """A download record keeps the Authorization a client sent, so leaks are caught."""
    url = await a_file_url(relay, session)
    await fetch(session, url)
    await fetch(session, url, headers=AUTH)
    clean, leaky = relay.downloads
    assert clean.authorization is None
    assert leaky.authorization == f"Bearer {KEY}"
    assert "authorization" not in leaky.headers
    assert clean.path == leaky.path == url.removeprefix(relay.url)
    assert clean.status == 200


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
        await eventually(lambda: relay.in_flight)
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
