"""Answers (`_answer`): a 2xx body as images, whatever shape the relay gives it, and the errors of
a body that holds none; end to end against the fake relay.

Reference bytes come from a plain aiohttp request to the relay, decoded by hand, never from the
client.
"""

import pytest

from gemimg_async.testing import QUIRKS, Fault
from helpers import FORMATS, listing, reference

pytestmark = pytest.mark.anyio


# --- url and b64_json answers ------------------------------------------------------------------


async def test_b64_results_in_memory_are_the_served_png(relay, client):
    """A b64_json answer without `save_to` holds exactly the served bytes, with their type."""
    expected = await reference(relay, "an owl", n=3)
    result = await client.generate("an owl", n=3, response_format="b64_json")
    assert [image.data for image in result.images] == expected
    assert all(image.media_type == "image/png" for image in result.images)
    assert all((image.width, image.height) == (1024, 1024) for image in result.images)
    assert result.paths == ()
    assert relay.download_count == 0
    assert relay.generation_count == result.attempts == 1


# --- every answer shape ------------------------------------------------------------------------


@pytest.mark.parametrize("quirk", QUIRKS)
@pytest.mark.parametrize("response_format", FORMATS)
async def test_every_answer_shape_saves_the_served_png(
    relay, client, folder, quirk, response_format
):
    """Whatever shape the relay gives its answer, the saved files are the PNGs it served."""
    expected = await reference(relay, "a koi pond", n=2)
    relay.script(Fault.quirk(quirk))
    result = await client.generate(
        "a koi pond", n=2, response_format=response_format, save_to=folder
    )
    assert [path.read_bytes() for path in result.paths] == expected
    assert [path.name for path in result.paths] == [f"{result.stem}_0.png", f"{result.stem}_1.png"]
    assert listing(folder) == sorted(path.name for path in result.paths)
    assert [image.byte_size for image in result.images] == [len(png) for png in expected]
    assert relay.generation_count == result.attempts == 1
    assert all(download.authorization is None for download in relay.downloads)


@pytest.mark.parametrize("quirk", QUIRKS)
@pytest.mark.parametrize("response_format", FORMATS)
async def test_every_answer_shape_without_save_to(relay, client, folder, quirk, response_format):
    """Without `save_to`, inline images hold the served bytes, URLs stay URLs; both save alike."""
    expected = await reference(relay, "a koi pond", n=2)
    relay.script(Fault.quirk(quirk))
    result = await client.generate("a koi pond", n=2, response_format=response_format)
    for image, png in zip(result.images, expected, strict=True):
        assert image.path is None
        if image.data is not None:
            assert image.data == png
            assert image.url is None
        else:
            assert image.url is not None
            assert image.url.startswith(("http://", "https://"))
    paths = await result.save(folder)
    assert [path.read_bytes() for path in paths] == expected
    assert listing(folder) == sorted(path.name for path in paths)
    assert relay.generation_count == result.attempts == 1
