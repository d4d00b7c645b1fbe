"""Events (`_events`): what a client tells its listeners, in order, never with the key."""

import logging

import pytest

import gemimg_async as gi
from gemimg_async.testing import FakeClock, FakeRelay, Fault
from helpers import API_KEY, SECRET

pytestmark = pytest.mark.anyio


async def test_a_retried_generation_tells_each_step_in_order(relay, tmp_path):
    """A 429 then an answer: sent, failed (retry in 1 s), sent, answered, saved, finished."""
    heard: list[gi.Event] = []
    relay.script(Fault.rate_limited("1"))
    async with gi.Client(API_KEY, relay.url, clock=FakeClock(), on_event=heard.append) as client:
        result = await client.generate("a fox", response_format="b64_json", save_to=tmp_path)
    assert [type(e).__name__ for e in heard] == [
        "RequestSent",
        "AttemptFailed",
        "RequestSent",
        "AnswerReceived",
        "ImageSaved",
        "GenerationFinished",
    ]
    sent, failed, again, answered, saved, finished = heard
    assert (sent.attempt, again.attempt) == (1, 2)
    assert sent.idempotency_key == again.idempotency_key == result.idempotency_key
    assert (failed.failure, failed.status, failed.retry_in) == ("throttled", 429, 1.0)
    assert failed.error.startswith("RateLimitError: HTTP 429")
    assert (answered.status, answered.request_id) == (200, result.request_id)
    assert saved.path == result.paths[0]
    assert (finished.attempts, finished.images, finished.error) == (2, 1, None)


async def test_a_failure_that_ends_a_generation_is_heard(relay):
    """A permanent error: sent, failed with no retry, finished with the error."""
    heard: list[gi.Event] = []
    relay.script(Fault.status(400, message="no"))
    async with gi.Client(API_KEY, relay.url, clock=FakeClock()) as client:
        with pytest.raises(gi.BadRequestError):
            await client.generate("a fox", on_event=heard.append)
    sent, failed, finished = heard
    assert isinstance(sent, gi.RequestSent)
    assert (failed.failure, failed.retry_in) == ("permanent", None)
    assert finished.error.startswith("BadRequestError")
    assert finished.images == 0


async def test_client_and_call_listeners_both_hear(relay):
    """A client's listener and a call's listener each hear every event of that call."""
    client_heard: list[gi.Event] = []
    call_heard: list[gi.Event] = []
    async with gi.Client(
        API_KEY, relay.url, clock=FakeClock(), on_event=client_heard.append
    ) as client:
        outcomes = [
            o
            async for o in client.map(
                [gi.ImageRequest("a fox", response_format="b64_json")], on_event=call_heard.append
            )
        ]
    assert outcomes[0].ok
    assert client_heard == call_heard
    assert len(call_heard) == 3  # sent, answered, finished: nothing saved in memory


async def test_a_listener_that_raises_changes_nothing(relay, caplog):
    """A listener's exception is logged; the generation goes on and succeeds."""

    def broken(event: gi.Event) -> None:
        raise RuntimeError("listener bug")

    async with gi.Client(API_KEY, relay.url, clock=FakeClock(), on_event=broken) as client:
        result = await client.generate("a fox")
    assert len(result.images) == 1
    assert any(
        r.levelno == logging.ERROR and "on_event listener raised" in r.getMessage()
        for r in caplog.records
    )


async def test_no_event_holds_the_key(tmp_path):
    """No event's repr, nor any of its fields, shows the API key."""
    heard: list[gi.Event] = []
    async with (
        FakeRelay(api_keys=frozenset({SECRET})) as relay,
        gi.Client(SECRET, relay.url, clock=FakeClock(), on_event=heard.append) as client,
    ):
        relay.script(Fault.server_error(502))
        await client.generate("a fox", save_to=tmp_path)
    assert len(heard) >= 5
    assert not any(SECRET in repr(event) for event in heard)
