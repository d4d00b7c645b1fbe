"""Results (`_results`): a frozen record of the exchange that holds no client, pickles, and saves
on its own after its client is gone; end to end against the fake relay.
"""

import gc
import pickle

import attrs
import pytest

from gemimg_async import (
    BadRequestError,
    Client,
    GeneratedImage,
    GenerationResult,
    ImageRequest,
    Timings,
)
from gemimg_async._generation import Engine
from gemimg_async._imagehost import ImageHost
from gemimg_async._transport import Relay
from gemimg_async.testing import FakeClock, Fault
from helpers import API_KEY, FORMATS, once, reference, untagged

pytestmark = pytest.mark.anyio


async def test_result_is_a_frozen_record_of_the_exchange(relay, client):
    """A result holds the request, the images, created, the relay's ids and timings, frozen."""
    result = await client.generate("a fox", size="16:9", response_format="b64_json")
    sent = relay.requests[-1]
    assert isinstance(result, GenerationResult)
    assert result.request == ImageRequest("a fox", size="16:9", response_format="b64_json")
    assert isinstance(result.created, int)
    assert result.created > 1_600_000_000
    assert result.request_id == sent.request_id
    assert result.request_ids == (sent.request_id,)
    assert result.idempotency_key == sent.idempotency_key
    assert result.attempts == 1
    assert isinstance(result.timings, Timings)
    assert min(result.timings.queued, result.timings.generating, result.timings.saving) >= 0
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        result.images = ()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        result.images[0].data = b""
    assert isinstance(result.images[0], GeneratedImage)


# --- no client, so it pickles and saves on its own ------------------------------------------


async def test_a_result_holds_no_reference_to_its_client(client):
    """No field of a result, nor what those hold two levels down, is the client or its engine."""
    result = await client.generate("a fox")
    values = list(attrs.asdict(result, recurse=False).values())
    level_one = [held for value in values for held in gc.get_referents(value)]
    level_two = [held for value in level_one for held in gc.get_referents(value)]
    reached = [*values, *level_one, *level_two]
    assert any(isinstance(obj, ImageHost) for obj in level_one)  # the walk gets inside the saver
    assert [obj for obj in reached if isinstance(obj, (Client, Engine, Relay))] == []


@pytest.mark.parametrize("response_format", FORMATS)
async def test_a_result_pickles_and_unpickles_equal(relay, response_format):
    """A result made by a real client comes back from pickle equal, its saver's limits too."""
    async with Client(API_KEY, relay.url, clock=FakeClock(), max_image_bytes=10**8) as client:
        result = await client.generate("a fox", n=2, size="3:2", response_format=response_format)
    copy = pickle.loads(pickle.dumps(result))  # noqa: S301 - our own bytes, the behaviour under test
    assert copy == result
    assert copy.images == result.images
    assert copy.saver == result.saver
    assert copy.saver.max_image_bytes == 10**8


async def test_an_unpickled_url_result_saves_after_its_client_is_closed(relay, tmp_path):
    """Unpickled with its client closed, a url result downloads its images without the key."""
    expected = await reference(relay, "a heron", n=2)
    async with Client(API_KEY, relay.url, clock=FakeClock()) as client:
        result = await client.generate("a heron", n=2)
    copy = pickle.loads(pickle.dumps(result))  # noqa: S301 - our own bytes, the behaviour under test
    assert copy.saver.host.is_closed()  # so each download opens a one-off session
    paths = list((await copy.save(tmp_path)).paths)
    assert [untagged(path) for path in paths] == expected
    assert [download.authorization for download in relay.downloads] == [None, None]
    assert copy.saver.host._session is None  # the one-off sessions are not kept
    assert relay.generation_count == result.attempts == 1


async def test_an_unpickled_b64_result_writes_its_bytes_after_its_client_is_closed(relay, tmp_path):
    """Unpickled with its client closed, a b64_json result writes the bytes it holds."""
    async with Client(API_KEY, relay.url, clock=FakeClock()) as client:
        result = await client.generate("an owl", n=2, response_format="b64_json")
    copy = pickle.loads(pickle.dumps(result))  # noqa: S301 - our own bytes, the behaviour under test
    paths = list((await copy.save(tmp_path)).paths)
    assert paths == [tmp_path / f"{result.stem}_0.png", tmp_path / f"{result.stem}_1.png"]
    assert [untagged(path) for path in paths] == [image.data for image in result.images]
    assert relay.downloads == []


async def test_an_outcome_with_an_error_pickles(relay):
    """A failed map() outcome pickles with its error: class, message, status and ids intact."""
    relay.script(Fault.status(400, message="bad size", code_field="invalid_size"))
    async with once(relay.url) as client:
        [outcome] = [o async for o in client.map([ImageRequest("a fox", id="fox")])]
    assert isinstance(outcome.error, BadRequestError)
    copy = pickle.loads(pickle.dumps(outcome))  # noqa: S301 - our own bytes, the behaviour under test
    assert (copy.index, copy.request, copy.result, copy.ok) == (0, outcome.request, None, False)
    assert type(copy.error) is BadRequestError
    assert str(copy.error) == str(outcome.error)
    assert (copy.error.status, copy.error.message, copy.error.code) == (
        400,
        "bad size",
        "invalid_size",
    )
    assert copy.error.request_ids == outcome.error.request_ids == (relay.requests[-1].request_id,)
    assert copy.idempotency_key == outcome.idempotency_key == relay.requests[-1].idempotency_key
    assert copy.to_json() == outcome.to_json()
