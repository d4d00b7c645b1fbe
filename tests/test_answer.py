"""Answers (`_answer`): a 2xx body as images, whatever shape the relay gives it, and the errors of
a body that holds none; end to end against the fake relay.

Reference bytes come from a plain aiohttp request to the relay, decoded by hand, never from the
client.
"""

import pytest

from gemimg_async import MalformedResponseError, RefusalError
from gemimg_async.testing import QUIRKS, FakeRelay, Fault
from helpers import (
    API_KEY,
    FORMATS,
    file_png_size,
    listing,
    no_temp_files,
    once,
    png_pixels_intact,
    png_size,
    reference,
    untagged,
)

pytestmark = pytest.mark.anyio


# --- url and b64_json answers ------------------------------------------------------------------


async def test_b64_format_returns_the_image_bytes(relay, client):
    """A b64_json answer holds the decoded PNG, typed and sized."""
    result = await client.generate("a lighthouse", size="3:2", response_format="b64_json")
    [image] = result.images
    assert image.data is not None
    assert png_size(image.data) == (1264, 848)
    assert (image.media_type, image.width, image.height) == ("image/png", 1264, 848)
    assert image.byte_size == len(image.data)
    assert relay.downloads == []


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


async def test_4k_b64_answer_of_tens_of_megabytes_streams_to_disk_intact(tmp_path):
    """A 4K b64_json answer (a ~38 MB JSON body) lands on disk as a whole, valid PNG."""
    async with (
        FakeRelay(api_keys=API_KEY, image_style="noise") as relay,
        once(relay.url) as client,
    ):
        result = await client.generate_4k(
            "noise", size="16:9", response_format="b64_json", save_to=tmp_path
        )
    [path] = result.paths
    assert path.stat().st_size > 40_000_000
    assert file_png_size(path) == (5504, 3072)
    assert png_pixels_intact(path)
    assert result.images[0].byte_size == path.stat().st_size


# --- every answer shape ------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
@pytest.mark.parametrize("quirk", QUIRKS)
async def test_every_relay_variant_gives_the_image(relay, client, tmp_path, quirk, response_format):
    """Whatever answer shape the relay picks, the image lands on disk intact."""
    relay.script(Fault.quirk(quirk))
    result = await client.generate(
        "a fox", size="4:5", response_format=response_format, save_to=tmp_path
    )
    [path] = result.paths
    assert path.name == f"{result.stem}_0.png"
    assert file_png_size(path) == (928, 1152)
    assert path.read_bytes().endswith(b"IEND\xaeB`\x82")
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("quirk", QUIRKS)
async def test_every_relay_variant_gives_the_image_in_memory(relay, client, quirk):
    """Without save_to, a b64_json answer of every shape yields the PNG bytes."""
    relay.script(Fault.quirk(quirk))
    result = await client.generate("a fox", response_format="b64_json")
    [image] = result.images
    assert image.data is not None
    assert png_size(image.data) == (1024, 1024)


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
    assert [untagged(path) for path in result.paths] == expected
    assert [path.name for path in result.paths] == [f"{result.stem}_0.png", f"{result.stem}_1.png"]
    assert listing(folder) == sorted(path.name for path in result.paths)
    assert [image.byte_size for image in result.images] == [p.stat().st_size for p in result.paths]
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
    paths = list((await result.save(folder)).paths)
    assert [untagged(path) for path in paths] == expected
    assert listing(folder) == sorted(path.name for path in paths)
    assert relay.generation_count == result.attempts == 1


async def test_b64_when_url_asked_gives_bytes(relay, client):
    """A relay that answers b64_json to a url request still yields the image, as bytes."""
    relay.script(Fault.quirk("b64_when_url_asked"))
    result = await client.generate("a fox")
    [image] = result.images
    assert image.data is not None
    assert png_size(image.data) == (1024, 1024)


async def test_escaped_slashes_give_a_working_url(relay, client):
    """JSON-escaped slashes in a url answer are unescaped into a fetchable URL."""
    relay.script(Fault.quirk("escaped_slashes"))
    result = await client.generate("a fox")
    [image] = result.images
    assert image.url is not None
    assert "\\" not in image.url
    assert image.url.startswith(f"{relay.url}/files/")


# --- a 200 without an image --------------------------------------------------------------------


async def test_200_with_error_body_raises_refusal(relay, client):
    """HTTP 200 with an {"error": ...} body raises RefusalError with its message and code."""
    relay.script(Fault.error_body("upstream returned no image", code="no_image"))
    with pytest.raises(RefusalError) as caught:
        await client.generate("a fox")
    error = caught.value
    assert error.status == 200
    assert "upstream returned no image" in error.message
    assert error.code == "no_image"
    assert error.request_id == relay.requests[-1].request_id
    assert len(relay.requests) == 1


@pytest.mark.parametrize("fault", [Fault.refusal(), Fault.fewer_images(0)])
async def test_200_with_no_data_raises_refusal(relay, client, fault):
    """HTTP 200 with "data": [] is a safety refusal: RefusalError, not an empty result."""
    relay.script(fault)
    with pytest.raises(RefusalError) as caught:
        await client.generate("a fox")
    assert caught.value.status == 200
    assert caught.value.request_id == relay.requests[-1].request_id
    assert len(relay.requests) == 1


async def test_200_with_an_html_page_raises_malformed_response(relay, client):
    """HTTP 200 with an HTML page raises MalformedResponseError."""
    relay.script(Fault.html())
    with pytest.raises(MalformedResponseError) as caught:
        await client.generate("a fox")
    assert caught.value.status == 200
    assert caught.value.request_id == relay.requests[-1].request_id
