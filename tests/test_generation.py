"""One generation (`_generation`): its Idempotency-Key and request ids across attempts, the
checks of what came back, and cancellation; end to end against the fake relay.
"""

import functools
import gc
import logging
from decimal import Decimal

import anyio
import pytest

from gemimg_async import (
    Client,
    ConfigurationError,
    Cost,
    ImageRequest,
    Prices,
    RefusalError,
    ServerError,
)
from gemimg_async._sinks import AtomicFile, MemoryImage
from gemimg_async.testing import FakeRelay, Fault
from helpers import API_KEY, ids, is_uuid4, keys, wait_for

pytestmark = pytest.mark.anyio


def answered(relay: FakeRelay) -> bool:
    """The relay has finished handling every request it got, one way or another."""
    return all(request.finished is not None for request in relay.requests)


# --- idempotency keys and request ids ----------------------------------------------------------


async def test_each_generation_gets_its_own_idempotency_key(relay, client):
    """Two generations send two different Idempotency-Keys."""
    first = await client.generate("a fox")
    second = await client.generate("a fox")
    keys = [r.idempotency_key for r in relay.requests]
    assert keys == [first.idempotency_key, second.idempotency_key]
    assert keys[0] != keys[1]


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


async def test_a_given_idempotency_key_is_sent_on_every_attempt(relay, client):
    """A request's own Idempotency-Key is the one sent, on each attempt, and on its result."""
    relay.script(Fault.server_error(502))
    request = ImageRequest("a fox", idempotency_key="resend-of-job-7")
    result = await client.send(request)
    assert [r.idempotency_key for r in relay.requests] == ["resend-of-job-7"] * 2
    assert result.idempotency_key == "resend-of-job-7"
    assert result.attempts == len(relay.requests) == 2


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


# --- what came back ----------------------------------------------------------------------------


async def test_fewer_images_than_asked_are_returned_as_they_are(relay, client, caplog):
    """n=3 answered with 1 image gives a result of 1 image and a warning."""
    relay.script(Fault.fewer_images(1))
    with caplog.at_level(logging.WARNING, logger="gemimg_async"):
        result = await client.generate("a fox", n=3)
    assert len(result.images) == 1
    assert "asked for 3 images" in caplog.text


# --- cancellation ------------------------------------------------------------------------------


async def test_cancelled_generation_frees_its_place_and_leaves_no_file(relay, client, tmp_path):
    """Cancelling a generation in flight releases its pool place and leaves no file."""
    relay.script(Fault.delay(1.0))
    with anyio.move_on_after(0.2) as scope:
        await client.generate("a fox", response_format="b64_json", save_to=tmp_path)
    assert scope.cancelled_caught
    assert client.stats.in_flight == 0
    assert list(tmp_path.iterdir()) == []
    result = await client.generate("a fox")
    assert len(result.images) == 1


async def test_cancelling_a_waiting_call_closes_its_connection(relay, clock):
    """A call cancelled while the relay generates hangs up: the relay's answer finds no one."""
    relay.script(Fault.delay(0.5))
    async with Client(API_KEY, relay.url, clock=clock) as client:
        scope = anyio.CancelScope()

        async def call():
            with scope:
                await client.generate("a fox")

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await wait_for(lambda: relay.generation_count == 1)
            scope.cancel()
        assert scope.cancelled_caught
        stats = client.stats
        assert (stats.in_flight, stats.limit, stats.retry_tokens) == (0, 8, 10.0)
        await wait_for(lambda: answered(relay))
        assert relay.requests[0].status is None
        after = await client.generate("a fox")
        assert after.attempts == 1
    assert relay.generation_count == 2
    gc.collect()


async def test_cancelling_a_task_group_closes_every_call(relay, clock):
    """Cancelling a task group of calls in flight hangs up all of them, and costs no budget."""
    relay.script(*[Fault.delay(0.5)] * 3)
    async with Client(API_KEY, relay.url, clock=clock) as client:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(client.generate, "a fox")
            await wait_for(lambda: relay.generation_count == 3)
            tg.cancel_scope.cancel()
        stats = client.stats
        assert (stats.in_flight, stats.waiting, stats.limit, stats.retry_tokens) == (0, 0, 8, 10.0)
        await wait_for(lambda: answered(relay))
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
    async with Client(API_KEY, noisy.url, clock=clock) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(
                    client.generate_4k,
                    "static",
                    response_format="b64_json",
                    save_to=folder if save else None,
                )
            )
            await wait_for(lambda: received["bytes"] > 2_000_000)
            tg.cancel_scope.cancel()
        stats = client.stats
        assert (stats.in_flight, stats.limit, stats.retry_tokens) == (0, 8, 10.0)
        assert list(folder.iterdir()) == []
        await wait_for(lambda: answered(noisy))
        assert noisy.in_flight == 0
        assert noisy.requests[0].status is None
    assert noisy.generation_count == 1
    gc.collect()


# --- what a generation cost --------------------------------------------------------------------


async def test_a_result_carries_its_estimate_by_the_clients_prices(relay, clock):
    """result.cost is the estimate by the client's table (the relay said nothing of cost)."""
    prices = Prices.from_json({"4K": "0.30"})
    async with Client(API_KEY, relay.url, clock=clock, prices=prices) as client:
        one = await client.generate("a fox", n=2)
        big = await client.generate_4k("a fox")
    assert one.cost == Cost.of(Decimal("0.268"))
    assert big.cost == Cost.of(Decimal("0.30"))
    assert client.prices is prices


async def test_a_reported_cost_is_kept_beside_the_estimate(clock):
    """LiteLLM's x-litellm-response-cost is the result's reported cost; totals prefer it."""
    async with (
        FakeRelay(api_keys=API_KEY, response_cost=0.05) as relay,
        Client(API_KEY, relay.url, clock=clock) as client,
    ):
        result = await client.generate("a fox", n=2)
        assert relay.requests[0].status == 200
    assert result.cost == Cost.of(Decimal("0.268"), Decimal("0.1"))
    assert result.cost.total == Decimal("0.1")


async def test_usage_is_priced_where_the_table_has_token_prices(relay, clock):
    """A chat answer's usage (tokens) is priced by the table's [tokens] when no header says."""
    prices = Prices.from_json({"tokens": {"input": 2, "output": 12, "image": 120}})
    async with Client(API_KEY, relay.url, clock=clock, prices=prices, dialect="chat") as client:
        result = await client.generate("a fox")
    usage = result.usage
    assert usage is not None
    assert usage.image_tokens == 1120
    expected = (usage.input_tokens * 2 + 10 * 12 + 1120 * 120) / Decimal(1_000_000)
    assert result.cost.reported == expected
    assert result.cost.estimated == Decimal("0.134")


async def test_a_refusal_keeps_what_the_relay_said_it_cost(clock):
    """A refusal's error carries the relay's reported cost; map's outcome puts it beside the
    estimate (a refused job charges only what the relay reported)."""
    async with (
        FakeRelay(api_keys=API_KEY, response_cost=0.01) as relay,
        Client(API_KEY, relay.url, clock=clock) as client,
    ):
        relay.script(Fault.refusal(), Fault.status(400))
        outcomes = [o async for o in client.map([ImageRequest("a"), ImageRequest("b")])]
    refused, failed = sorted(outcomes, key=lambda outcome: outcome.index)
    assert isinstance(refused.error, RefusalError)
    assert refused.error.reported_cost == Decimal("0.0")
    assert refused.cost == Cost.of(Decimal("0.134"), Decimal("0.0"))
    assert failed.error is not None
    assert failed.error.reported_cost is None  # an error status: no answer to read
    assert failed.cost == Cost.of(Decimal("0.134"))
    assert refused.to_json()["cost"] == {
        "estimated": 0.134,
        "reported": 0,
        "total": 0,
        "currency": "USD",
    }


def test_prices_must_be_a_price_table():
    """Client(prices=) takes a Prices value; a path is a ConfigurationError saying so."""
    with pytest.raises(ConfigurationError, match=r"Prices\.from_file"):
        Client(API_KEY, "http://127.0.0.1:9", prices="prices.toml")
