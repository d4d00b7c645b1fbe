"""Retries (`_retry`) that never double-bill: what is sent again, when, and how often; the retry
budget; Retry-After.

The end-to-end tests check that the relay saw exactly as many generation requests as the client
reports attempts: no hidden resends. Waits go through `FakeClock`, so no test sleeps for a
backoff; `clock.sleeps` shows what the client would have waited.
"""

import email.utils
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gemimg_async import (
    AuthenticationError,
    BadRequestError,
    Client,
    ConnectError,
    ContentPolicyError,
    MalformedResponseError,
    OutcomeUnknownError,
    RateLimitError,
    RefusalError,
    RetryPolicy,
    ServerError,
    Timeouts,
)
from gemimg_async._retry import RetryBudget, parse_retry_after
from gemimg_async.testing import Fault
from helpers import API_KEY, big_png, closed_port_url, ids, is_uuid4, keys

pytestmark = pytest.mark.anyio

THROTTLES = {
    "429": Fault.rate_limited(),
    "503": Fault.server_error(503),
    "408": Fault.status(408),
}

LOST = {
    "read-timeout": Fault.delay(2),
    "reset-after-body": Fault.reset(),
    "truncated": Fault.truncate(),
}

PERMANENT = {
    "400": (Fault.status(400), BadRequestError),
    "400-html": (Fault.status(400, html=True), BadRequestError),
    "401": (Fault.status(401), AuthenticationError),
    "403": (Fault.status(403), AuthenticationError),
    "404": (Fault.status(404), BadRequestError),
    "413": (Fault.status(413), BadRequestError),
    "422": (Fault.status(422), BadRequestError),
    "blocked": (
        Fault.status(
            400,
            message="Your request was rejected as a result of our safety system.",
            code_field="content_policy_violation",
        ),
        ContentPolicyError,
    ),
    "blocked-chinese": (Fault.status(400, message="提示词包含敏感内容"), ContentPolicyError),
    "refusal": (Fault.refusal(), RefusalError),
    "no-images": (Fault.fewer_images(0), RefusalError),
    "error-body": (Fault.error_body("upstream said no"), RefusalError),
    "html-200": (Fault.html(), MalformedResponseError),
}

NOW = 1_700_000_000.0


def headers(**fields: str) -> CIMultiDict[str]:
    """Response headers as aiohttp hands them over: names case-insensitive."""
    return CIMultiDict({name.replace("_", "-"): value for name, value in fields.items()})


# --- not sent: safe to send again --------------------------------------------------------------


async def test_a_refused_connection_is_tried_three_times_with_backoff(clock):
    """Nothing listening: three attempts, waits drawn from [0.25, 0.5] then [0.5, 1]."""
    async with Client(API_KEY, closed_port_url(), clock=clock) as client:
        with pytest.raises(ConnectError) as info:
            await client.generate("a fox")
    assert info.value.attempts == 3
    assert len(clock.sleeps) == 2
    assert 0.25 <= clock.sleeps[0] <= 0.5
    assert 0.5 <= clock.sleeps[1] <= 1.0
    assert is_uuid4(info.value.idempotency_key)
    assert info.value.request_ids == ()


async def test_closed_port_with_default_retries_still_raises_connect_error(clock):
    """The default policy retries a refused connection with instant sleeps, then raises."""
    async with Client(API_KEY, closed_port_url(), clock=clock) as client:
        with pytest.raises(ConnectError) as caught:
            await client.generate("a fox")
    assert caught.value.attempts == RetryPolicy().not_sent_attempts


async def test_a_reset_before_the_body_was_sent_is_retried(relay, client, clock):
    """A connection dropped while a 6 MB body was still going out is sent again, same key."""
    relay.script(Fault.reset(after_body=False), Fault.reset(after_body=False))
    result = await client.generate("a fox in this style", images=big_png())
    assert relay.generation_count == result.attempts == 3
    assert [request.status for request in relay.requests] == [None, None, 200]
    assert keys(relay) == [result.idempotency_key] * 3
    assert len(clock.sleeps) == 2
    assert 0.25 <= clock.sleeps[0] <= 0.5
    assert 0.5 <= clock.sleeps[1] <= 1.0
    assert result.request_ids == (relay.requests[2].request_id,)


async def test_resets_before_the_body_was_sent_stop_after_three(relay, client, clock):
    """Three early resets raise ConnectError after exactly three sends."""
    relay.script(*[Fault.reset(after_body=False)] * 3)
    with pytest.raises(ConnectError) as info:
        await client.generate("a fox in this style", images=big_png())
    assert relay.generation_count == info.value.attempts == 3
    assert len(clock.sleeps) == 2


# --- throttled: back off, then try again -------------------------------------------------------


@pytest.mark.parametrize("fault", THROTTLES.values(), ids=THROTTLES.keys())
async def test_throttled_answers_are_retried_with_full_jitter(relay, client, clock, fault):
    """429/503/408 are tried five times in all, the k-th wait in [0, min(5 * 2**k, 60)]."""
    relay.script(*[fault] * 4)
    result = await client.generate("a fox")
    assert relay.generation_count == result.attempts == 5
    assert len(clock.sleeps) == 4
    for k, wait in enumerate(clock.sleeps):
        assert 0.0 <= wait <= min(5.0 * 2**k, 60.0)
    assert len(set(keys(relay))) == 1
    assert result.request_ids == ids(relay)


@pytest.mark.parametrize("fault", THROTTLES.values(), ids=THROTTLES.keys())
async def test_throttling_that_persists_raises_after_five_attempts(relay, client, clock, fault):
    """Five throttled answers in a row raise the last one, with every attempt accounted for."""
    relay.script(*[fault] * 5)
    with pytest.raises((RateLimitError, ServerError)) as info:
        await client.generate("a fox")
    assert info.value.status == fault.status_code
    assert relay.generation_count == info.value.attempts == 5
    assert len(clock.sleeps) == 4
    assert info.value.request_ids == ids(relay)
    assert info.value.request_id == relay.requests[-1].request_id


async def test_rate_limits_that_persist_raise_after_instant_retries(relay, client, clock):
    """With the default policy and a fake clock, persistent 429s end in RateLimitError."""
    relay.script(*[Fault.rate_limited("3")] * 10)
    with pytest.raises(RateLimitError) as caught:
        await client.generate("a fox")
    assert len(clock.sleeps) == len(relay.requests) - 1 > 0
    assert caught.value.attempts == len(relay.requests)
    assert caught.value.request_ids == tuple(r.request_id for r in relay.requests)
    assert caught.value.request_id == relay.requests[-1].request_id


@pytest.mark.parametrize(
    ("fault", "wait"),
    [
        (Fault.rate_limited("2"), 2.0),
        (Fault.rate_limited("0"), 0.0),
        (Fault.rate_limited("120"), 120.0),
        (Fault.rate_limited(" 30 "), 30.0),
        (Fault.status(429, headers={"retry-after-ms": "1500"}), 1.5),
        (Fault.status(429, retry_after="9", headers={"retry-after-ms": "250"}), 0.25),
        (Fault.status(503, retry_after="7"), 7.0),
    ],
    ids=["2s", "0s", "120s", "spaces", "ms", "ms-wins", "503"],
)
async def test_retry_after_up_to_two_minutes_is_obeyed(relay, client, clock, fault, wait):
    """A Retry-After (or retry-after-ms) of 0-120 s is the wait, whatever the backoff says."""
    relay.script(fault)
    result = await client.generate("a fox")
    assert clock.sleeps == [pytest.approx(wait)]
    assert relay.generation_count == result.attempts == 2


async def test_retry_after_as_an_http_date(relay, client, clock):
    """An HTTP-date Retry-After waits until then, by the client's wall clock."""
    then = datetime.fromtimestamp(clock.time() + 42, UTC)
    relay.script(Fault.rate_limited(email.utils.format_datetime(then, usegmt=True)))
    result = await client.generate("a fox")
    assert len(clock.sleeps) == 1
    assert clock.sleeps[0] == pytest.approx(42, abs=1)
    assert relay.generation_count == result.attempts == 2


@pytest.mark.parametrize("value", ["soon", "-3", "Tomorrow, maybe", "inf"])
async def test_unreadable_retry_after_falls_back_to_the_backoff(relay, client, clock, value):
    """A Retry-After that cannot be read is ignored: the first throttled wait is in [0, 5]."""
    relay.script(Fault.rate_limited(value))
    result = await client.generate("a fox")
    assert len(clock.sleeps) == 1
    assert 0.0 <= clock.sleeps[0] <= 5.0
    assert relay.generation_count == result.attempts == 2


@pytest.mark.parametrize(
    ("fault", "seconds"),
    [
        (Fault.rate_limited("121"), 121.0),
        (Fault.rate_limited("3600"), 3600.0),
        (Fault.status(429, headers={"retry-after-ms": "120001"}), 120.001),
    ],
    ids=["121s", "1h", "ms"],
)
async def test_retry_after_over_two_minutes_is_raised_at_once(relay, client, clock, fault, seconds):
    """A Retry-After above 120 s raises RateLimitError with the value, without waiting."""
    relay.script(fault)
    with pytest.raises(RateLimitError) as info:
        await client.generate("a fox")
    assert info.value.retry_after == pytest.approx(seconds)
    assert clock.sleeps == []
    assert relay.generation_count == info.value.attempts == 1


async def test_waiting_as_the_server_asks_costs_no_budget(relay, client, clock):
    """Throttled retries that follow the server's Retry-After leave the retry budget whole."""
    for _ in range(2):
        relay.script(*[Fault.rate_limited("1")] * 4)
        result = await client.generate("a fox")
        assert result.attempts == 5
    assert client.stats.retry_tokens == 10.0
    assert clock.sleeps == [1.0] * 8
    assert relay.generation_count == 10


# --- server errors: one more try ---------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_a_server_error_is_retried_once(relay, client, clock, status):
    """One 500/502/504, then success: two attempts, same key."""
    relay.script(Fault.server_error(status))
    result = await client.generate("a fox")
    assert relay.generation_count == result.attempts == 2
    assert len(clock.sleeps) == 1
    assert len(set(keys(relay))) == 1


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_server_errors_get_at_most_one_retry(relay, client, clock, status):
    """Two 500/502/504 in a row raise ServerError after exactly two sends."""
    relay.script(Fault.server_error(status), Fault.server_error(status))
    with pytest.raises(ServerError) as info:
        await client.generate("a fox")
    assert info.value.status == status
    assert relay.generation_count == info.value.attempts == 2
    assert len(clock.sleeps) == 1


# --- outcome unknown: may be billed, so never sent again by default ----------------------------


@pytest.mark.parametrize("fault", LOST.values(), ids=LOST.keys())
async def test_a_lost_answer_is_never_sent_again(relay, clock, fault):
    """A read timeout, a reset after the body or a truncated answer raises OutcomeUnknownError."""
    relay.script(fault)
    async with Client(API_KEY, relay.url, clock=clock, timeouts=Timeouts(read=0.3)) as client:
        with pytest.raises(OutcomeUnknownError) as info:
            await client.generate("a fox", response_format="b64_json")
    assert relay.generation_count == info.value.attempts == 1
    assert clock.sleeps == []
    assert info.value.idempotency_key == relay.requests[0].idempotency_key


@pytest.mark.parametrize("fault", LOST.values(), ids=LOST.keys())
async def test_opting_in_resends_once_with_the_same_key(relay, clock, fault):
    """With outcome_unknown_attempts=2 a lost answer is sent exactly once more, same key."""
    relay.script(fault, fault)
    policy = RetryPolicy(outcome_unknown_attempts=2)
    async with Client(
        API_KEY, relay.url, clock=clock, retry=policy, timeouts=Timeouts(read=0.3)
    ) as client:
        with pytest.raises(OutcomeUnknownError) as info:
            await client.generate("a fox", response_format="b64_json")
    assert relay.generation_count == info.value.attempts == 2
    assert keys(relay) == [info.value.idempotency_key] * 2
    assert len(clock.sleeps) == 1


async def test_an_opted_in_resend_can_succeed(relay, clock):
    """After one lost answer the opted-in resend brings the image, under the first key."""
    relay.script(Fault.reset())
    policy = RetryPolicy(outcome_unknown_attempts=2)
    async with Client(API_KEY, relay.url, clock=clock, retry=policy) as client:
        result = await client.generate("a fox")
    assert relay.generation_count == result.attempts == 2
    assert keys(relay) == [result.idempotency_key] * 2


async def test_a_proxy_that_gave_up_waiting_is_an_unknown_outcome(relay, client, clock):
    """A 524 (a proxy stopped waiting; the relay may have gone on and billed) is not resent."""
    relay.script(Fault.status(524, message="A timeout occurred"))
    with pytest.raises(ServerError) as info:
        await client.generate("a fox")
    assert info.value.status == 524
    assert relay.generation_count == info.value.attempts == 1
    assert clock.sleeps == []


# --- permanent: never retried ------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "error"), PERMANENT.values(), ids=PERMANENT.keys())
async def test_permanent_failures_are_never_retried(relay, client, clock, fault, error):
    """4xx, a blocked prompt, and a 200 without an image are raised after one send."""
    relay.script(fault)
    with pytest.raises(error) as info:
        await client.generate("a fox")
    assert relay.generation_count == info.value.attempts == 1
    assert clock.sleeps == []
    assert info.value.request_ids == ids(relay)
    assert client.stats.retry_tokens == 10.0


async def test_a_wrong_key_is_never_retried(relay, clock):
    """The relay's own 401 for a bad key is raised after one send, without the key in it."""
    async with Client("sk-wrong-key-0123456789", relay.url, clock=clock) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.generate("a fox")
    assert relay.generation_count == info.value.attempts == 1
    assert clock.sleeps == []
    assert "sk-wrong-key-0123456789" not in f"{info.value} {info.value!r}"


# --- the client-wide retry budget --------------------------------------------------------------


async def test_a_dead_relay_drains_the_retry_budget(clock):
    """Against a closed port the shared budget drains: retries stop, failures come at once."""
    async with Client(API_KEY, closed_port_url(), clock=clock) as client:
        attempts, tokens = [], []
        for _ in range(4):
            with pytest.raises(ConnectError) as info:
                await client.generate("a fox")
            attempts.append(info.value.attempts)
            tokens.append(client.stats.retry_tokens)
    assert attempts == [3, 3, 1, 1]  # a retry costs a token; a last attempt costs none
    assert tokens == [8.0, 6.0, 5.0, 4.0]


async def test_throttling_everywhere_drains_the_retry_budget(relay, client, clock):
    """Many 503s without Retry-After: the first request retries, the second gets one attempt."""
    relay.script(*[Fault.server_error(503)] * 20)
    with pytest.raises(ServerError) as first:
        await client.generate("a fox")
    assert first.value.attempts == 5
    assert client.stats.retry_tokens == 6.0
    with pytest.raises(ServerError) as second:
        await client.generate("a fox")
    assert second.value.attempts == 1
    assert client.stats.retry_tokens == 5.0
    assert relay.generation_count == first.value.attempts + second.value.attempts


async def test_successes_earn_the_budget_back(relay, client):
    """Each success returns a tenth of a token, up to the full budget."""
    relay.script(*[Fault.server_error(503)] * 5)
    with pytest.raises(ServerError):
        await client.generate("a fox")
    assert client.stats.retry_tokens == 6.0
    attempts = sum([(await client.generate("a fox")).attempts for _ in range(10)])
    assert client.stats.retry_tokens == pytest.approx(7.0)
    assert relay.generation_count == 5 + attempts == 15


async def test_failures_never_retried_cost_no_budget(relay, client):
    """Lost answers (never resent) do not drain the budget that other retries need."""
    relay.script(*[Fault.reset()] * 5)
    for _ in range(5):
        with pytest.raises(OutcomeUnknownError):
            await client.generate("a fox")
    assert client.stats.retry_tokens == 10.0


# --- RetryBudget -------------------------------------------------------------------------------


def test_budget_starts_full():
    """A new budget holds all its tokens."""
    budget = RetryBudget(10.0, 0.1)
    assert budget.tokens == 10.0


def test_budget_allows_retries_while_above_half():
    """Failures cost a token each; retries stop once half or less is left."""
    budget = RetryBudget(10.0, 0.1)
    allowed = [budget.failed() for _ in range(7)]
    assert allowed == [True, True, True, True, False, False, False]
    assert budget.tokens == 3.0


def test_budget_never_goes_below_zero():
    """A relay that fails forever drains the budget to zero, not below."""
    budget = RetryBudget(4.0, 0.5)
    for _ in range(20):
        budget.failed()
    assert budget.tokens == 0.0


def test_successes_refill_the_budget_by_the_ratio_up_to_the_maximum():
    """Each success earns `ratio` of a token back, never more than `max_tokens`."""
    budget = RetryBudget(10.0, 0.1)
    for _ in range(6):
        budget.failed()
    assert budget.tokens == 4.0
    assert not budget.failed()
    assert budget.tokens == 3.0
    for _ in range(40):
        budget.succeeded()
    assert budget.tokens == pytest.approx(7.0)
    assert budget.failed()
    for _ in range(1000):
        budget.succeeded()
    assert budget.tokens == 10.0


# --- parse_retry_after -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("2", 2.0), (" 7 ", 7.0), ("1.5", 1.5), ("120", 120.0), ("121", 121.0)],
)
def test_retry_after_seconds(value, seconds):
    """`Retry-After: <seconds>` is read as seconds, large values included (the caller caps)."""
    assert parse_retry_after(headers(retry_after=value), NOW) == seconds


@pytest.mark.parametrize(("value", "seconds"), [("1500", 1.5), ("0", 0.0), ("250.5", 0.2505)])
def test_retry_after_ms(value, seconds):
    """`retry-after-ms` is read in milliseconds."""
    assert parse_retry_after(headers(retry_after_ms=value), NOW) == pytest.approx(seconds)


def test_retry_after_ms_wins_over_retry_after():
    """With both headers, the finer one counts."""
    found = parse_retry_after(headers(retry_after="9", retry_after_ms="1500"), NOW)
    assert found == pytest.approx(1.5)


def test_unreadable_retry_after_ms_falls_back_to_retry_after():
    """A garbled `retry-after-ms` does not hide a good `Retry-After`."""
    assert parse_retry_after(headers(retry_after="3", retry_after_ms="soon"), NOW) == 3.0


def test_header_names_are_case_insensitive():
    """`RETRY-AFTER` is `Retry-After`."""
    assert parse_retry_after(CIMultiDict({"RETRY-AFTER": "4"}), NOW) == 4.0


@pytest.mark.parametrize("ahead", [0, 1, 30, 3600])
def test_retry_after_http_date(ahead):
    """An HTTP date means the time left until then, by the given wall clock."""
    date = email.utils.format_datetime(datetime.fromtimestamp(NOW + ahead, UTC), usegmt=True)
    assert parse_retry_after(headers(retry_after=date), NOW) == pytest.approx(ahead, abs=1)


def test_retry_after_date_in_the_past_means_now():
    """A date already gone waits zero, never a negative time."""
    date = email.utils.format_datetime(datetime.fromtimestamp(NOW - 600, UTC), usegmt=True)
    assert parse_retry_after(headers(retry_after=date), NOW) == 0.0


@pytest.mark.parametrize(
    "value", ["", "soon", "-1", "inf", "nan", "-inf", "1e999", "Mon, 99 Foo 2024", "1,5"]
)
def test_unreadable_retry_after_is_none(value):
    """Garbage, negatives and infinities give None, so the caller backs off on its own."""
    assert parse_retry_after(headers(retry_after=value), NOW) is None


@pytest.mark.parametrize("value", ["-1", "inf", "nan", "x"])
def test_unreadable_retry_after_ms_alone_is_none(value):
    """A bad `retry-after-ms` without `Retry-After` gives None."""
    assert parse_retry_after(headers(retry_after_ms=value), NOW) is None


def test_no_retry_after_is_none():
    """No header, no wait from the server."""
    assert parse_retry_after(CIMultiDict(), NOW) is None


@given(seconds=st.integers(0, 10**6))
def test_any_whole_seconds_value_round_trips(seconds):
    """Every non-negative integer of seconds is read back as itself."""
    assert parse_retry_after(headers(retry_after=str(seconds)), NOW) == float(seconds)
