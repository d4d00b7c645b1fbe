"""Errors to HTTP (`_http`): `error_response(error)` gives each error the status, code and
Retry-After a web backend should answer, with a detail that holds nothing of the relay's."""

import json

import pytest

import gemimg_async as gi
from gemimg_async.testing import FakeClock, Fault
from helpers import API_KEY

pytestmark = pytest.mark.anyio

RELAY_TEXT = "upstream channel 7 at http://10.0.0.5 failed"

PoolTimeoutError = gi.PoolTimeoutError


def api(cls, status, **kwargs):
    return cls(RELAY_TEXT, status=status, **kwargs)


def result():
    return gi.GenerationResult(
        request=gi.ImageRequest("a fox"),
        images=(),
        created=None,
        idempotency_key="k",
        request_ids=(),
        attempts=1,
        timings=gi.Timings(0.0),
        stem="fox",
    )


MAPPING = [
    # error, status, code, Retry-After
    (gi.InvalidPromptError("the prompt is empty"), 422, "invalid_request", None),
    (gi.InvalidSizeError("size '7:3' is not supported"), 422, "invalid_request", None),
    (gi.TooManyImagesError("15 input images, at most 14"), 422, "invalid_request", None),
    (gi.InvalidDestinationError("save_to is a file"), 500, "storage", None),
    (api(gi.ContentPolicyError, 400), 422, "content_policy", None),
    (api(gi.RefusalError, 200), 422, "no_image", None),
    (api(gi.BadRequestError, 400), 400, "rejected", None),
    (api(gi.BadRequestError, 413), 400, "rejected", None),
    (api(gi.RateLimitError, 429, retry_after=7.2), 429, "rate_limited", 8),
    (api(gi.RateLimitError, 429), 429, "rate_limited", 5),
    (PoolTimeoutError("no place in the pool within 0.5 s"), 503, "busy", 5),
    (gi.LimiterUnavailableError("the shared limiter cannot reach Redis"), 503, "busy", 5),
    (gi.ClientClosedError("the client is closing"), 503, "shutting_down", None),
    (gi.ConnectError(f"POST {RELAY_TEXT}: could not connect"), 503, "relay_unreachable", 5),
    (api(gi.ServerError, 503, retry_after=30), 503, "relay_unavailable", 30),
    (api(gi.ServerError, 500), 502, "relay_error", None),
    (api(gi.ServerError, 408), 502, "relay_error", None),
    (api(gi.ModelNotServedError, 503), 502, "model_unavailable", None),
    (api(gi.AuthenticationError, 401), 502, "relay_auth", None),
    (api(gi.MalformedResponseError, 200), 502, "relay_error", None),
    (gi.OutcomeUnknownError(f"POST {RELAY_TEXT}: reset"), 502, "outcome_unknown", None),
    (gi.DownloadError(RELAY_TEXT, url="https://cdn/x.png"), 502, "download_failed", None),
    (gi.ImageExpiredError(RELAY_TEXT, url="https://cdn/x.png"), 502, "download_failed", None),
    (gi.SaveError("disk full", result=result()), 500, "storage", None),
    (gi.ConfigurationError("no API key"), 500, "misconfigured", None),
    (gi.EventLoopError("another event loop"), 500, "misconfigured", None),
    (gi.GemimgError(RELAY_TEXT), 500, "internal", None),
    (RuntimeError(RELAY_TEXT), 500, "internal", None),
]


@pytest.mark.parametrize(
    ("error", "status", "code", "retry_after"),
    MAPPING,
    ids=[f"{type(e).__name__}-{s}" for e, s, *_ in MAPPING],
)
def test_each_error_has_its_status(error, status, code, retry_after):
    """Each error class maps to its documented status, code and Retry-After."""
    answer = gi.error_response(error)
    assert (answer.status, answer.code, answer.retry_after) == (status, code, retry_after)
    assert answer.headers == ({"Retry-After": str(retry_after)} if retry_after else {})


@pytest.mark.parametrize("error", [e for e, *_ in MAPPING], ids=lambda e: type(e).__name__)
def test_the_detail_holds_nothing_of_the_relay(error):
    """The detail and body are fixed sentences: the relay's text and address never go out."""
    answer = gi.error_response(error)
    assert RELAY_TEXT not in json.dumps(answer.to_json())
    assert answer.detail


def test_a_validation_error_says_what_was_wrong():
    """A ValidationError's own message, about the caller's input, is the detail."""
    answer = gi.error_response(gi.InvalidSizeError("size '7:3' is not supported"))
    assert answer.to_json() == {
        "error": {"code": "invalid_request", "message": "size '7:3' is not supported"}
    }


def test_the_default_wait_can_be_chosen():
    """retry_after= is the wait advised when the error names none; it is rounded up."""
    answer = gi.error_response(gi.ConnectError("down"), retry_after=0.2)
    assert answer.headers == {"Retry-After": "1"}
    assert gi.error_response(PoolTimeoutError("full"), retry_after=2.5).retry_after == 3


def test_the_request_id_is_in_the_body():
    """The relay's request id, when the error has one, is in the body for both sides' logs."""
    error = api(gi.ServerError, 500, request_id="req_123")
    assert gi.error_response(error).to_json()["error"]["request_id"] == "req_123"


@pytest.mark.parametrize(
    ("fault", "status", "retry_after"),
    [
        (Fault.rate_limited("7"), 429, 7),
        (Fault.status(400, message=RELAY_TEXT), 400, None),
        (Fault.blocked(), 422, None),
        (Fault.refusal(), 422, None),
        (Fault.server_error(503), 503, 5),
        (Fault.server_error(500), 502, None),
        (Fault.reset(), 502, None),
    ],
)
async def test_errors_of_a_real_client_map(relay, fault, status, retry_after):
    """Errors a client raises against the fake relay map to the documented statuses."""
    relay.script(fault, fault, fault, fault)
    retry = gi.RetryPolicy.never()
    async with gi.Client(API_KEY, relay.url, retry=retry, clock=FakeClock()) as client:
        with pytest.raises(gi.GemimgError) as caught:
            await client.generate("a fox")
    answer = gi.error_response(caught.value)
    assert (answer.status, answer.retry_after) == (status, retry_after)
    assert answer.request_id == caught.value.request_id
    assert relay.url not in json.dumps(answer.to_json())
