"""What the fake relay saw (`testing._records`): one record per generation request and per
download, never holding the key; over plain aiohttp.
"""

import pytest

from gemimg_async.testing._records import Flights
from helpers import API_KEY, AUTH, SIXTEEN_BYTES, STANDARD, a_file_url, body, fetch, generate, post

pytestmark = pytest.mark.anyio


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
    for key in (API_KEY, "sk-wrong-secret"):
        headers = {"Authorization": f"Bearer {key}", "X-Api-Key": key}
        await post(session, relay, body(), headers=headers)
    for record in relay.requests:
        assert "authorization" not in record.headers
        assert record.headers["x-api-key"] == "<redacted>"
    assert API_KEY not in repr(relay.requests)
    assert "sk-wrong-secret" not in repr(relay.requests)
    assert API_KEY not in repr(relay)


async def test_download_record_shows_authorization(relay, session):
    """A download record keeps the Authorization a client sent, so leaks are caught."""
    url = await a_file_url(relay, session)
    await fetch(session, url)
    await fetch(session, url, headers=AUTH)
    clean, leaky = relay.downloads
    assert clean.authorization is None
    assert leaky.authorization == f"Bearer {API_KEY}"
    assert "authorization" not in leaky.headers
    assert clean.path == leaky.path == url.removeprefix(relay.url)
    assert clean.status == 200


def test_flights_count_each_request_out_once_and_keep_the_most():
    """A request counted in is counted out once however often it leaves (before its last byte,
    then when its handler ends); `most` is the peak since the start or reset."""
    flights = Flights()
    first, second = flights.enter(), flights.enter()
    first()
    first()
    assert (flights.now, flights.most) == (1, 2)
    flights.reset()
    assert flights.most == 1
    second()
    assert (flights.now, flights.most) == (0, 1)
