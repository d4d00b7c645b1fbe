"""Failures that never double-bill (issue 4), through the client against the fake relay.

Every test that reaches the relay checks that the relay saw exactly as many generation requests
as the client reports attempts: no hidden resends. Waits go through `FakeClock`, so no test
sleeps for a backoff; `clock.sleeps` shows what the client would have waited.
"""

import email.utils
import functools
import gc
import logging
import os
import socket
import struct
import uuid
import zlib
from datetime import UTC, datetime

import anyio
import pytest

from gemimg_async import (
    AuthenticationError,
    BadRequestError,
    Client,
    ConfigurationError,
    ConnectError,
    ContentPolicyError,
    GemimgError,
    ImageRequest,
    InvalidPromptError,
    MalformedResponseError,
    OutcomeUnknownError,
    RateLimitError,
    RefusalError,
    RetryPolicy,
    ServerError,
    Timeouts,
)
from gemimg_async._sinks import AtomicFile, MemoryImage
from gemimg_async.testing import FakeRelay, Fault

pytestmark = pytest.mark.anyio

KEY = "sk-test"


def closed_port_url() -> str:
    """A loopback URL where nothing listens: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@functools.cache
def big_png() -> bytes:
    """A valid ~5.9 MB PNG of random pixels: its request body cannot all sit in socket buffers."""
    width = height = 1400
    rows = b"".join(b"\x00" + os.urandom(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(rows, 0)),
            chunk(b"IEND", b""),
        )
    )


async def poll(condition, *, attempts: int = 5_000) -> None:
    """Let other tasks run until `condition()` holds."""
    for _ in range(attempts):
        if condition():
            return
        await anyio.sleep(0.001)
    raise AssertionError("the condition never held")


def keys(relay: FakeRelay) -> list[str | None]:
    return [request.idempotency_key for request in relay.requests]


def ids(relay: FakeRelay) -> tuple[str, ...]:
    return tuple(request.request_id for request in relay.requests)


def is_uuid4(value: str | None) -> bool:
    try:
        return uuid.UUID(value or "").version == 4
    except ValueError:
        return False


# --- not sent: safe to send again --------------------------------------------------------------


async def test_a_refused_connection_is_tried_three_times_with_backoff(clock):
    """Nothing listening: three attempts, waits drawn from [0.25, 0.5] then [0.5, 1]."""
    async with Client(KEY, closed_port_url(), clock=clock) as client:
        with pytest.raises(ConnectError) as info:
            await client.generate("a fox")
    assert info.value.attempts == 3
    assert len(clock.sleeps) == 2
    assert 0.25 <= clock.sleeps[0] <= 0.5
    assert 0.5 <= clock.sleeps[1] <= 1.0
    assert is_uuid4(info.value.idempotency_key)
    assert info.value.request_ids == ()


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


THROTTLES = {
    "429": Fault.rate_limited(),
    "503": Fault.server_error(503),
    "408": Fault.status(408),
}


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


LOST = {
    "read-timeout": Fault.delay(2),
    "reset-after-body": Fault.reset(),
    "truncated": Fault.truncate(),
}


@pytest.mark.parametrize("fault", LOST.values(), ids=LOST.keys())
async def test_a_lost_answer_is_never_sent_again(relay, clock, fault):
    """A read timeout, a reset after the body or a truncated answer raises OutcomeUnknownError."""
    relay.script(fault)
    async with Client(KEY, relay.url, clock=clock, timeouts=Timeouts(read=0.3)) as client:
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
        KEY, relay.url, clock=clock, retry=policy, timeouts=Timeouts(read=0.3)
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
    async with Client(KEY, relay.url, clock=clock, retry=policy) as client:
        result = await client.generate("a fox")
    assert relay.generation_count == result.attempts == 2
    assert keys(relay) == [result.idempotency_key] * 2


# --- permanent: never retried ------------------------------------------------------------------


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


async def test_invalid_requests_are_never_sent(relay, client):
    """A request that fails validation costs nothing: the relay sees no request."""
    with pytest.raises(InvalidPromptError):
        await client.generate("   ")
    assert relay.generation_count == 0


# --- idempotency keys and request ids ----------------------------------------------------------


async def test_each_request_has_its_own_key_kept_across_attempts(relay, client):
    """Every attempt of a request sends one uuid4 Idempotency-Key; the next request another."""
    relay.script(Fault.server_error(502))
    first = await client.generate("a fox")
    second = await client.generate("a fox")
    assert keys(relay) == [first.idempotency_key] * 2 + [second.idempotency_key]
    assert first.idempotency_key != second.idempotency_key
    assert is_uuid4(first.idempotency_key)
    assert is_uuid4(second.idempotency_key)
    assert first.request_ids == ids(relay)[:2]
    assert second.request_ids == ids(relay)[2:]
    assert (first.attempts, second.attempts) == (2, 1)
    assert relay.generation_count == first.attempts + second.attempts


async def test_errors_carry_key_request_ids_and_attempts(relay, client):
    """A failed request's error names its key, the relay's id of each attempt, and the count."""
    relay.script(Fault.rate_limited("0"), Fault.server_error(502), Fault.server_error(502))
    with pytest.raises(ServerError) as info:
        await client.generate("a fox")
    error = info.value
    assert error.idempotency_key == relay.requests[0].idempotency_key
    assert keys(relay) == [error.idempotency_key] * 3
    assert error.request_ids == ids(relay)
    assert error.request_id == relay.requests[-1].request_id
    assert relay.generation_count == error.attempts == 3


async def test_concurrent_requests_never_share_a_key(relay, client):
    """Twenty requests at once send twenty different keys."""
    results = []

    async def one():
        results.append(await client.generate("a fox"))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    assert len(set(keys(relay))) == 20
    assert {result.idempotency_key for result in results} == set(keys(relay))
    assert relay.generation_count == sum(result.attempts for result in results)


# --- the client-wide retry budget --------------------------------------------------------------


async def test_a_dead_relay_drains_the_retry_budget(clock):
    """Against a closed port the shared budget drains: retries stop, failures come at once."""
    async with Client(KEY, closed_port_url(), clock=clock) as client:
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


# --- adaptive concurrency and rate ------------------------------------------------------------


async def test_repeated_429s_shrink_the_limit_to_one(relay, clock):
    """Each throttled request (in a new epoch) shrinks the limit: 8, 5, 3, 2, 1, never 0."""
    async with Client(KEY, relay.url, clock=clock, retry=RetryPolicy.never()) as client:
        assert client.stats.limit == 8
        limits, attempts = [], 0
        for _ in range(5):
            relay.script(Fault.rate_limited())
            with pytest.raises(RateLimitError) as info:
                await client.generate("a fox")
            limits.append(client.stats.limit)
            attempts += info.value.attempts
    assert limits == [5, 3, 2, 1, 1]
    assert relay.generation_count == attempts == 5


async def test_successes_grow_the_limit_back_one_per_ten(relay, clock):
    """After shrinking to 1, every ten successes add one place, up to max_concurrency."""
    async with Client(KEY, relay.url, clock=clock, retry=RetryPolicy.never()) as client:
        for _ in range(4):
            relay.script(Fault.rate_limited())
            with pytest.raises(RateLimitError):
                await client.generate("a fox")
        assert client.stats.limit == 1
        limits, attempts = [], 4
        for _ in range(80):
            attempts += (await client.generate("a fox")).attempts
            limits.append(client.stats.limit)
    assert relay.generation_count == attempts == 84
    assert limits[8::10] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert limits[9::10] == [2, 3, 4, 5, 6, 7, 8, 8]
    assert max(limits) == 8


async def test_429s_of_requests_in_flight_together_shrink_once(relay, clock):
    """Four requests throttled in the same epoch shrink the limit once, not four times."""
    relay.script(*[Fault.rate_limited()] * 4)
    errors = []
    async with Client(KEY, relay.url, clock=clock, retry=RetryPolicy.never()) as client:

        async def one():
            try:
                await client.generate("a fox")
            except RateLimitError as error:
                errors.append(error)

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)
        assert client.stats.limit == 5
    assert len(errors) == 4
    assert relay.generation_count == sum(error.attempts for error in errors)


async def test_each_retry_of_one_request_is_a_new_signal(relay, client):
    """A retry goes out under the limit of its time, so each further 429 shrinks it again."""
    relay.script(*[Fault.rate_limited("0")] * 4)
    result = await client.generate("a fox")
    assert client.stats.limit == 1  # 8, 5, 3, 2, 1
    assert relay.generation_count == result.attempts == 5


async def test_a_burst_of_429s_in_flight_together_shrinks_once(relay, client):
    """Eight requests throttled while in flight together shrink the limit once, not eight times;
    their retries then queue under the smaller limit."""
    relay.script(*[Fault.rate_limited("0")] * 8)
    relay.latency = 0.05
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(client.generate, "a fox")
    finally:
        relay.latency = 0.0
    assert client.stats.limit == 5
    assert relay.generation_count == 16
    assert client.stats.pool_waits >= 3  # eight retries, five places


async def test_rpm_spaces_starts(relay, clock):
    """With rpm=60, back-to-back requests wait one second each before starting."""
    async with Client(KEY, relay.url, clock=clock, rpm=60) as client:
        results = [await client.generate("a fox") for _ in range(3)]
        assert client.stats.rate_waits == 2
    assert clock.sleeps == [pytest.approx(1.0), pytest.approx(1.0)]
    assert relay.generation_count == sum(result.attempts for result in results) == 3


async def test_without_rpm_nothing_waits(relay, client, clock):
    """No rpm, no rate waits."""
    attempts = sum([(await client.generate("a fox")).attempts for _ in range(3)])
    assert client.stats.rate_waits == 0
    assert clock.sleeps == []
    assert relay.generation_count == attempts == 3


# --- cancellation ------------------------------------------------------------------------------


def answered(relay: FakeRelay) -> bool:
    """The relay has finished handling every request it got, one way or another."""
    return all(request.finished is not None for request in relay.requests)


async def test_cancelling_a_waiting_call_closes_its_connection(relay, clock):
    """A call cancelled while the relay generates hangs up: the relay's answer finds no one."""
    relay.script(Fault.delay(0.5))
    async with Client(KEY, relay.url, clock=clock) as client:
        scope = anyio.CancelScope()

        async def call():
            with scope:
                await client.generate("a fox")

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await poll(lambda: relay.generation_count == 1)
            scope.cancel()
        assert scope.cancelled_caught
        stats = client.stats
        assert (stats.in_flight, stats.limit, stats.retry_tokens) == (0, 8, 10.0)
        await poll(lambda: answered(relay))
        assert relay.requests[0].status is None
        after = await client.generate("a fox")
        assert after.attempts == 1
    assert relay.generation_count == 2
    gc.collect()


async def test_cancelling_a_task_group_closes_every_call(relay, clock):
    """Cancelling a task group of calls in flight hangs up all of them, and costs no budget."""
    relay.script(*[Fault.delay(0.5)] * 3)
    async with Client(KEY, relay.url, clock=clock) as client:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(client.generate, "a fox")
            await poll(lambda: relay.generation_count == 3)
            tg.cancel_scope.cancel()
        stats = client.stats
        assert (stats.in_flight, stats.waiting, stats.limit, stats.retry_tokens) == (0, 0, 8, 10.0)
        await poll(lambda: answered(relay))
        assert [request.status for request in relay.requests] == [None, None, None]
    assert relay.generation_count == 3
    gc.collect()


@pytest.mark.parametrize("save", [False, True], ids=["memory", "save_to"])
async def test_cancelling_mid_body_stops_the_transfer(noisy, clock, tmp_path, monkeypatch, save):
    """A call cancelled while a 4K answer streams in hangs up at once: the relay stops sending."""
    folder = tmp_path / "out"
    folder.mkdir()
    received = {"bytes": 0}
    for sink in (MemoryImage, AtomicFile):
        real_write = sink.write

        async def write(self, data, real_write=real_write):
            received["bytes"] += len(data)
            await real_write(self, data)

        monkeypatch.setattr(sink, "write", write)
    async with Client(KEY, noisy.url, clock=clock) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(
                    client.generate_4k,
                    "static",
                    response_format="b64_json",
                    save_to=folder if save else None,
                )
            )
            await poll(lambda: received["bytes"] > 2_000_000)
            tg.cancel_scope.cancel()
        stats = client.stats
        assert (stats.in_flight, stats.limit, stats.retry_tokens) == (0, 8, 10.0)
        assert list(folder.iterdir()) == []
        await poll(lambda: answered(noisy))
        assert noisy.in_flight == 0
        assert noisy.requests[0].status is None
    assert noisy.generation_count == 1
    gc.collect()


# --- key safety --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        "http://api.example.com",
        "http://api.example.com/v1",
        "http://10.1.2.3:8080",
        "http://192.168.0.10",
        "http://[2001:db8::1]:3000",
        "HTTP://relay.example.org",
    ],
)
async def test_plain_http_to_a_remote_host_is_refused(base_url):
    """The key is never sent unencrypted off this machine unless allow_insecure_http=True."""
    with pytest.raises(ConfigurationError) as info:
        Client(KEY, base_url)
    assert KEY not in str(info.value)
    async with Client(KEY, base_url, allow_insecure_http=True):
        pass


@pytest.mark.parametrize(
    "base_url",
    [
        "https://api.example.com",
        "http://127.0.0.1:8080",
        "http://127.9.9.9",
        "http://localhost:3000/v1",
        "http://[::1]:3000",
    ],
)
async def test_https_and_loopback_need_no_opt_in(base_url):
    """https anywhere and http to this machine are accepted as they are."""
    async with Client(KEY, base_url) as client:
        assert KEY not in repr(client)


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
    assert KEY not in text
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


async def test_a_given_idempotency_key_is_sent_on_every_attempt(relay, client):
    """A request's own Idempotency-Key is the one sent, on each attempt, and on its result."""
    relay.script(Fault.server_error(502))
    request = ImageRequest("a fox", idempotency_key="resend-of-job-7")
    result = await client.send(request)
    assert [r.idempotency_key for r in relay.requests] == ["resend-of-job-7"] * 2
    assert result.idempotency_key == "resend-of-job-7"
    assert result.attempts == len(relay.requests) == 2


# --- found in review ---------------------------------------------------------------------------


async def test_waiting_as_the_server_asks_costs_no_budget(relay, client, clock):
    """Throttled retries that follow the server's Retry-After leave the retry budget whole."""
    for _ in range(2):
        relay.script(*[Fault.rate_limited("1")] * 4)
        result = await client.generate("a fox")
        assert result.attempts == 5
    assert client.stats.retry_tokens == 10.0
    assert clock.sleeps == [1.0] * 8
    assert relay.generation_count == 10


async def test_failures_never_retried_cost_no_budget(relay, client):
    """Lost answers (never resent) do not drain the budget that other retries need."""
    relay.script(*[Fault.reset()] * 5)
    for _ in range(5):
        with pytest.raises(OutcomeUnknownError):
            await client.generate("a fox")
    assert client.stats.retry_tokens == 10.0


async def test_a_proxy_that_gave_up_waiting_is_an_unknown_outcome(relay, client, clock):
    """A 524 (a proxy stopped waiting; the relay may have gone on and billed) is not resent."""
    relay.script(Fault.status(524, message="A timeout occurred"))
    with pytest.raises(ServerError) as info:
        await client.generate("a fox")
    assert info.value.status == 524
    assert relay.generation_count == info.value.attempts == 1
    assert clock.sleeps == []


async def test_the_key_is_not_chained_from_aiohttp_request_info(relay, client):
    """An aiohttp error that carries the request's headers is chained onto ours without the
    key: it is nowhere in the error's chain, nor in its traceback's locals."""
    import traceback  # noqa: PLC0415

    relay.script(Fault.status(500, headers={"X-Huge": "x" * 20_000}))
    with pytest.raises(GemimgError) as info:
        await client.generate("a fox")
    error = info.value
    assert error.__cause__ is not None
    assert KEY not in repr(error.__cause__)
    frames = traceback.TracebackException.from_exception(error, capture_locals=True)
    assert KEY not in "".join(frames.format())
