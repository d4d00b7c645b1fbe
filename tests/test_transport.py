"""HTTP (`_transport`): aiohttp's errors as ours, and the key kept to the relay's session, out of
every error, log, result and download; end to end against the fake relay.
"""

import logging

import pytest

from gemimg_async import (
    AuthenticationError,
    BadRequestError,
    Client,
    ConnectError,
    DownloadError,
    GemimgError,
    ImageRequest,
    OutcomeUnknownError,
    Timeouts,
    TransportError,
)
from gemimg_async.testing import FakeClock, FakeRelay, Fault
from helpers import API_KEY, SECRET, closed_port_url, ids, once, texts_of

pytestmark = pytest.mark.anyio


# --- aiohttp errors as ours --------------------------------------------------------------------


async def test_closed_port_raises_connect_error(relay):
    """Nothing listening raises ConnectError: a TransportError, chained from aiohttp's."""
    async with once(closed_port_url()) as client:
        with pytest.raises(ConnectError) as caught:
            await client.generate("a fox")
    error = caught.value
    assert isinstance(error, TransportError)
    assert error.__cause__ is not None
    assert error.idempotency_key is not None
    assert error.request_id is None


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
@pytest.mark.parametrize("fault", [Fault.reset(), Fault.truncate(0.5), Fault.truncate(0.0)])
async def test_lost_answer_raises_outcome_unknown_and_is_not_resent(
    relay, client, fault, response_format
):
    """A reset after the body, or a truncated answer, raises OutcomeUnknownError, sent once."""
    relay.script(fault)
    with pytest.raises(OutcomeUnknownError) as caught:
        await client.generate("a fox", response_format=response_format)
    assert isinstance(caught.value, TransportError)
    assert caught.value.__cause__ is not None
    assert len(relay.requests) == 1
    assert caught.value.idempotency_key == relay.requests[-1].idempotency_key


async def test_read_timeout_raises_outcome_unknown(relay):
    """No answer within the client's read timeout raises OutcomeUnknownError."""
    relay.script(Fault.delay(1.0))
    async with once(relay.url, timeouts=Timeouts(read=0.1)) as client:
        with pytest.raises(OutcomeUnknownError, match="read timeout"):
            await client.generate("a fox")
    assert len(relay.requests) == 1


# --- the key never leaks -----------------------------------------------------------------------


@pytest.fixture
async def secret_relay():
    async with FakeRelay(api_keys=SECRET) as relay:
        yield relay


def assert_no_secret(client, *objects):
    for obj in (client, *objects):
        assert SECRET not in str(obj)
        assert SECRET not in repr(obj)


async def test_key_is_sent_as_bearer_and_kept_out_of_results(secret_relay, tmp_path, caplog):
    """The key authorises the request but never shows in the client, request, result or logs."""
    caplog.set_level(logging.DEBUG)
    async with Client(SECRET, secret_relay.url, clock=FakeClock()) as client:
        result = await client.generate("a fox", n=2, size="1:1")
        paths = list((await result.save(tmp_path)).paths)
        b64 = await client.generate("a fox", response_format="b64_json", save_to=tmp_path / "b")
        assert_no_secret(client, result, b64, result.request, *result.images, client.stats)
    assert all(r.authorized for r in secret_relay.requests)
    assert all(d.authorization is None for d in secret_relay.downloads)
    assert all(SECRET not in str(d.headers) for d in secret_relay.downloads)
    assert len(paths) == 2
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    "fault",
    [
        Fault.rate_limited("1"),
        Fault.server_error(502),
        Fault.status(400, message="bad"),
        Fault.status(502, html=True),
        Fault.error_body("nope"),
        Fault.refusal(),
        Fault.html(),
        Fault.reset(),
        Fault.truncate(0.3),
    ],
)
async def test_key_never_in_errors(secret_relay, fault, caplog):
    """No error, nor anything chained to it, nor the log, shows the key."""
    caplog.set_level(logging.DEBUG)
    secret_relay.script(fault)
    async with once(secret_relay.url, key=SECRET) as client:
        with pytest.raises(GemimgError) as caught:
            await client.generate("a fox", response_format="b64_json")
    for text in texts_of(caught.value):
        assert SECRET not in text
    assert SECRET not in str(vars(caught.value))
    assert SECRET not in caplog.text


async def test_key_never_in_authentication_errors(secret_relay, caplog):
    """A rejected key does not appear in the AuthenticationError that reports it."""
    caplog.set_level(logging.DEBUG)
    wrong = SECRET[:-1] + "X"
    async with once(secret_relay.url, key=wrong) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.generate("a fox")
    for text in texts_of(caught.value):
        assert wrong not in text
    assert wrong not in caplog.text


async def test_key_never_in_transport_errors(caplog):
    """A connect failure does not show the key."""
    caplog.set_level(logging.DEBUG)
    async with Client(SECRET, closed_port_url(), clock=FakeClock()) as client:
        with pytest.raises(ConnectError) as caught:
            await client.generate("a fox")
    for text in texts_of(caught.value):
        assert SECRET not in text
    assert SECRET not in caplog.text


async def test_key_never_in_download_errors(secret_relay, tmp_path):
    """A failed image download does not show the key."""
    async with once(secret_relay.url, key=SECRET) as client:
        secret_relay.script_download(Fault.status(503))
        with pytest.raises(DownloadError) as caught:
            await client.generate("a fox", save_to=tmp_path)
    for text in texts_of(caught.value):
        assert SECRET not in text


async def test_key_never_in_map_outcomes(secret_relay):
    """map() outcomes, failed or not, and their JSON summaries do not show the key."""
    secret_relay.script(Fault.status(400, message="bad"), Fault.reset())
    requests = [ImageRequest("a fox", id=f"r{i}") for i in range(3)]
    async with once(secret_relay.url, key=SECRET, max_concurrency=1) as client:
        outcomes = [outcome async for outcome in client.map(requests, ordered=True)]
    assert [outcome.ok for outcome in outcomes] == [False, False, True]
    for outcome in outcomes:
        assert SECRET not in repr(outcome)
        assert SECRET not in str(outcome.to_json())
        if outcome.error is not None:
            assert all(SECRET not in text for text in texts_of(outcome.error))


async def test_the_key_is_not_chained_from_aiohttp_request_info(relay, client):
    """An aiohttp error that carries the request's headers is chained onto ours without the
    key: it is nowhere in the error's chain, nor in its traceback's locals."""
    import traceback  # noqa: PLC0415

    relay.script(Fault.status(500, headers={"X-Huge": "x" * 20_000}))
    with pytest.raises(GemimgError) as info:
        await client.generate("a fox")
    error = info.value
    assert error.__cause__ is not None
    assert API_KEY not in repr(error.__cause__)
    frames = traceback.TracebackException.from_exception(error, capture_locals=True)
    assert API_KEY not in "".join(frames.format())


async def test_logs_tell_what_happened_and_never_the_key(relay, client, caplog):
    """DEBUG logs name method, URL, status, attempt and request id, and never the key."""
    caplog.set_level(logging.DEBUG, logger="gemimg_async")
    relay.script(Fault.rate_limited("1"), Fault.server_error(502))
    result = await client.generate("a fox")
    relay.script(Fault.status(400))
    with pytest.raises(BadRequestError) as info:
        await client.generate("a fox")
    records = [record for record in caplog.records if record.name.startswith("gemimg_async")]
    text = "\n".join(
        [record.getMessage() for record in records]
        + [record.exc_text or "" for record in records]
        + [caplog.text, str(info.value), repr(info.value)]
    )
    assert API_KEY not in text
    assert "Bearer" not in text
    assert "POST" in text
    assert f"{relay.url}/v1/images/generations" in text
    for status in ("429", "502", "200", "400"):
        assert status in text
    assert "attempt 1" in text
    assert "attempt 2" in text
    for request_id in ids(relay):
        assert request_id in text
    assert relay.generation_count == result.attempts + info.value.attempts == 4
