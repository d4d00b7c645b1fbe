"""Results (`_results`): a frozen record of the exchange that holds no client, pickles, and saves
on its own after its client is gone.
"""

import attrs
import pytest

from gemimg_async import GeneratedImage, GenerationResult, ImageRequest, Timings

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
