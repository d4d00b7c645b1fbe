"""HTTP (`_transport`): aiohttp's errors as ours, and the key kept to the relay's session, out of
every error, log, result and download; end to end against the fake relay.
"""

import logging

import pytest

from gemimg_async import BadRequestError, GemimgError
from gemimg_async.testing import Fault
from helpers import API_KEY, ids

pytestmark = pytest.mark.anyio


# --- the key never leaks -----------------------------------------------------------------------


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
