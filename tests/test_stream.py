"""`Client.stream` (`_stream`): one image handed on as bytes, in bounded memory, never a draft;
a caller that leaves or is cancelled cancels the generation and leaves nothing behind."""

import asyncio

import anyio
import pytest

import gemimg_async as gi
from gemimg_async.testing import FakeClock, Fault
from helpers import API_KEY, reference, wait_for

pytestmark = pytest.mark.anyio


async def collect(image: gi.ImageStream) -> bytes:
    return b"".join([chunk async for chunk in image])


@pytest.mark.parametrize("response_format", ["b64_json", "url"])
async def test_a_stream_hands_on_the_served_image(relay, client, response_format):
    """The bytes streamed are the served PNG, typed image/png; a URL is fetched without the key."""
    (png,) = await reference(relay, "a koi pond")
    async with client.stream("a koi pond", response_format=response_format) as image:
        assert image.media_type == "image/png"
        assert await collect(image) == png
    assert image.result.attempts == 1
    assert [d.authorization for d in relay.downloads] == (
        [None] if response_format == "url" else []
    )


@pytest.mark.parametrize("dialect", ["images", "chat", "gemini"])
async def test_a_stream_never_hands_on_a_draft(relay, dialect):
    """With drafts in the answer, one image is handed on: the final one."""
    relay.script(Fault.drafts(2))
    async with (
        gi.Client(API_KEY, relay.url, dialect=dialect, clock=FakeClock()) as client,
        client.stream("a fox", response_format="b64_json") as image,
    ):
        data = await collect(image)
    assert data.startswith(b"\x89PNG")
    assert len(image.result.images) == 1


async def test_n_above_one_is_refused_before_sending(relay, client):
    """stream() hands on one image: n=2 is an InvalidCountError, and nothing is sent."""
    with pytest.raises(gi.InvalidCountError):
        async with client.stream("a fox", n=2):
            pass
    assert relay.generation_count == 0


async def test_a_failed_generation_raises_on_entering(relay, client):
    """The generation's error comes out of the `async with`, as generate() would raise it."""
    relay.script(Fault.status(400, message="no"))
    with pytest.raises(gi.BadRequestError):
        async with client.stream("a fox"):
            pytest.fail("the block ran")


async def test_a_cancelled_caller_cancels_the_generation(relay):
    """A caller cancelled while the relay generates (a client that hung up) drops the relay's
    connection, and nothing is left in flight or on disk."""
    relay.latency = 5.0
    try:
        async with gi.Client(API_KEY, relay.url, clock=FakeClock()) as client:

            async def hand_on() -> None:
                async with client.stream("a fox", response_format="b64_json") as image:
                    await collect(image)

            task = asyncio.create_task(hand_on())
            await wait_for(lambda: relay.in_flight == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_for(lambda: relay.in_flight == 0)
            assert client.stats.in_flight == 0
    finally:
        relay.latency = 0.0
    [seen] = relay.requests
    assert seen.status is None  # the relay never got to answer: the client hung up


async def test_leaving_early_stops_the_download(relay, client):
    """Leaving the block after the first chunk of a URL image closes its download."""
    async with client.stream("a fox") as image:
        async for _ in image:
            break
    with anyio.fail_after(5):
        await wait_for(lambda: all(d.finished is not None for d in relay.downloads))
