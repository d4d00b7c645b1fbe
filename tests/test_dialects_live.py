"""Each dialect end to end against the fake relay over real sockets: every kind of request, every
tier, drafts, refusals and faults, with the relay's request count equal to the attempts."""

import base64
import json
import struct

import pytest

import gemimg_async as gi
from gemimg_async.testing import FakeClock, FakeRelay, Fault, pixel_size, png

pytestmark = pytest.mark.anyio

API_KEY = "sk-test"
DIALECTS = ("images", "chat", "gemini")
CHAT_STYLES = ("images", "markdown", "parts")
STANDARD = "gemini-3-pro-image-preview"


def png_size_of(data: bytes) -> tuple[int, int]:
    return struct.unpack(">II", data[16:24])


def client_for(relay, dialect, **kwargs) -> gi.Client:
    return gi.Client(API_KEY, relay.url, dialect=dialect, clock=FakeClock(), **kwargs)


@pytest.fixture(params=DIALECTS)
def dialect(request):
    return request.param


@pytest.fixture
def chat_style(relay):
    """Set how the relay's chat answers carry images, for one test."""
    styles = []

    def set_style(style):
        styles.append(relay.chat_style)
        relay.chat_style = style

    yield set_style
    if styles:
        relay.chat_style = styles[0]


async def test_text_to_image_in_every_dialect(relay, dialect, tmp_path):
    """A prompt alone gives one image, saved to disk, through each dialect's own route."""
    async with client_for(relay, dialect) as client:
        result = await client.generate("a lighthouse at dusk", size="16:9", save_to=tmp_path)
    [path] = result.paths
    assert png_size_of(path.read_bytes()[:24]) == (1376, 768)
    [seen] = relay.requests
    assert seen.dialect == dialect
    assert seen.prompt == "a lighthouse at dusk"
    assert seen.size == "16:9"
    assert result.attempts == 1


@pytest.mark.parametrize("style", CHAT_STYLES)
async def test_chat_finds_the_image_wherever_the_relay_puts_it(relay, chat_style, style):
    """message.images, Markdown in message.content and content parts all give the image."""
    chat_style(style)
    async with client_for(relay, "chat") as client:
        result = await client.generate("a fox", response_format="b64_json")
    [image] = result.images
    assert image.data is not None
    assert png_size_of(image.data) == (1024, 1024)
    assert result.text == "Here is the image you asked for."


async def test_chat_answers_with_links_are_downloaded_without_the_key(relay, tmp_path):
    """A chat answer that links its image is downloaded through the key-less session."""
    relay.chat_urls = True
    try:
        async with client_for(relay, "chat") as client:
            result = await client.generate("a fox", save_to=tmp_path)
    finally:
        relay.chat_urls = False
    assert len(result.paths) == 1
    [download] = relay.downloads
    assert download.authorization is None


@pytest.mark.parametrize(
    ("model", "tier"),
    [(STANDARD, "1K"), (f"{STANDARD}-2k", "2K"), (f"{STANDARD}-4k", "4K")],
)
async def test_every_tier_in_every_dialect(relay, dialect, model, tier):
    """Each tier comes back at Google's pixel size, judged as asked."""
    async with client_for(relay, dialect) as client:
        result = await client.generate(
            "a quiet harbour", model=model, size="4:3", response_format="b64_json"
        )
    [image] = result.images
    assert (image.width, image.height) == pixel_size(model, "4:3")
    [delivered] = result.delivered
    assert delivered.tier == tier
    assert delivered.as_asked
    assert not result.downgraded


async def test_gemini_sends_the_tier_as_image_size_on_the_base_model(relay):
    """The -4k name becomes imageSize "4K" on gemini-3-pro-image-preview."""
    async with client_for(relay, "gemini") as client:
        await client.generate_4k("a harbour", size="21:9", response_format="b64_json")
    [seen] = relay.requests
    assert seen.model == STANDARD
    config = seen.body["generationConfig"]
    assert config["imageConfig"] == {"aspectRatio": "21:9", "imageSize": "4K"}
    assert config["responseModalities"] == ["IMAGE"]
    assert "x-goog-api-key" not in seen.headers  # the relay keeps the key out of its records
    assert seen.authorized


async def test_gemini_can_send_the_key_as_a_bearer_header(relay):
    """GeminiDialect(auth="bearer") authenticates with Authorization: Bearer."""
    dialect = gi.GeminiDialect(auth="bearer")
    async with gi.Client(API_KEY, relay.url, dialect=dialect, clock=FakeClock()) as client:
        await client.generate("a fox", response_format="b64_json")
    assert relay.requests[0].authorized


async def test_image_to_image_with_a_data_uri(relay, dialect):
    """An input image given as bytes reaches the relay as the same image, in each dialect."""
    source = png(5, 4)
    async with client_for(relay, dialect) as client:
        await client.generate("make it blue", images=[source], response_format="b64_json")
    [seen] = relay.requests
    [sent] = seen.images
    assert base64.b64decode(sent.partition(",")[2]) == source
    assert sent.startswith("data:image/png;base64,")


async def test_multi_image_fusion_with_urls(relay, dialect):
    """Two input URLs reach the relay as two URLs, in order."""
    urls = ["https://example.com/person.png", "https://example.com/coat.jpg"]
    async with client_for(relay, dialect) as client:
        await client.generate("the coat of 2 on 1", images=urls, response_format="b64_json")
    assert list(relay.requests[0].images) == urls
    if dialect == "gemini":
        parts = relay.requests[0].body["contents"][0]["parts"]
        assert parts[2]["fileData"] == {"mimeType": "image/jpeg", "fileUri": urls[1]}


async def test_n_images_in_every_dialect(relay, dialect, tmp_path):
    """n=3 gives three images, each saved under its own name."""
    async with client_for(relay, dialect) as client:
        result = await client.generate("three foxes", n=3, save_to=tmp_path)
    assert [p.name for p in result.paths] == [f"{result.stem}_{i}.png" for i in range(3)]


async def test_drafts_are_never_the_result(relay, dialect, tmp_path):
    """Draft images (thought parts, or extra images first) are dropped: the final one is kept,
    and no draft reaches a file."""
    relay.script(Fault.drafts(2))
    async with client_for(relay, dialect) as client:
        result = await client.generate("a fox", save_to=tmp_path)
    assert len(result.paths) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [result.paths[0].name]


@pytest.mark.parametrize("quirk", ["thought_first", "snake_case"])
async def test_gemini_answers_in_every_key_order_and_case(relay, quirk, tmp_path):
    """A thought flag before the draft's data, and snake_case keys, change nothing."""
    relay.script(Fault.drafts(1), Fault.quirk(quirk))
    async with client_for(relay, "gemini") as client:
        first = await client.generate("a fox", save_to=tmp_path)
        second = await client.generate("a fox", save_to=tmp_path)
    assert len(first.paths) == len(second.paths) == 1


async def test_usage_is_read_where_the_dialect_has_it(relay, dialect):
    """Token counts come back on the result: 2,000 image tokens for a 4K image."""
    async with client_for(relay, dialect) as client:
        result = await client.generate_4k("a fox", response_format="b64_json", size="1:1")
    if dialect == "images":
        assert result.usage is None
    else:
        assert result.usage is not None
        assert result.usage.image_tokens == 2000


@pytest.mark.parametrize(
    ("fault", "code"),
    [(Fault.refusal(), None), (Fault.refusal("IMAGE_SAFETY"), "IMAGE_SAFETY")],
)
async def test_refusals_in_every_dialect(relay, dialect, fault, code):
    """A 200 without an image is a RefusalError, sent once."""
    relay.script(fault)
    async with client_for(relay, dialect) as client:
        with pytest.raises(gi.RefusalError) as caught:
            await client.generate("something forbidden")
    assert relay.generation_count == caught.value.attempts == 1
    if dialect == "gemini":
        assert caught.value.code == "IMAGE_SAFETY"
    if dialect == "chat":
        assert caught.value.code == "content_filter"


async def test_a_blocked_prompt_in_every_dialect(relay, dialect):
    """A blocked prompt raises, is not retried, and names the reason."""
    relay.script(Fault.blocked("PROHIBITED_CONTENT"))
    async with client_for(relay, dialect) as client:
        with pytest.raises(gi.APIError) as caught:
            await client.generate("something forbidden")
    assert "PROHIBITED_CONTENT" in str(caught.value)
    assert relay.generation_count == caught.value.attempts == 1
    expected = gi.RefusalError if dialect == "gemini" else gi.ContentPolicyError
    assert isinstance(caught.value, expected)


@pytest.mark.parametrize(
    ("fault", "error", "attempts"),
    [
        (Fault.rate_limited("1"), None, 2),
        (Fault.server_error(500), None, 2),
        (Fault.server_error(524), gi.ServerError, 1),
        (Fault.server_error(503), None, 2),
        (Fault.reset(), gi.OutcomeUnknownError, 1),
        (Fault.truncate(0.5), gi.OutcomeUnknownError, 1),
        (Fault.html(), gi.MalformedResponseError, 1),
        (Fault.error_body("upstream exploded"), gi.RefusalError, 1),
        (Fault.status(400, message="bad request"), gi.BadRequestError, 1),
    ],
)
async def test_every_fault_class_in_every_dialect(relay, dialect, fault, error, attempts):
    """Each fault ends as the billing rules say, with as many requests as attempts."""
    relay.script(fault)
    async with client_for(relay, dialect) as client:
        if error is None:
            result = await client.generate("a fox", response_format="b64_json")
            assert result.attempts == attempts
        else:
            with pytest.raises(error) as caught:
                await client.generate("a fox", response_format="b64_json")
            assert caught.value.attempts == attempts
    assert relay.generation_count == attempts


async def test_a_google_429_waits_as_its_retry_info_says(relay):
    """Google's RetryInfo retryDelay ("7s") is the wait, as Retry-After would be."""
    clock = FakeClock()
    relay.script(Fault.rate_limited("7"))
    async with gi.Client(API_KEY, relay.url, dialect="gemini", clock=clock) as client:
        await client.generate("a fox", response_format="b64_json")
    assert clock.sleeps == [7.0]


async def test_a_wrong_key_in_every_dialect(relay, dialect):
    """A wrong key is an AuthenticationError in every dialect (Google answers 400)."""
    async with gi.Client("sk-wrong", relay.url, dialect=dialect, clock=FakeClock()) as client:
        with pytest.raises(gi.AuthenticationError):
            await client.generate("a fox")
    assert relay.generation_count == 1


async def test_a_4k_image_through_every_dialect_streams_to_disk(noisy, dialect, tmp_path):
    """A 4K image of tens of megabytes arrives whole in each dialect's answer shape."""
    async with client_for(noisy, dialect) as client:
        result = await client.generate_4k("noise", size="16:9", save_to=tmp_path)
    [path] = result.paths
    assert png_size_of(path.read_bytes()[:24]) == (5504, 3072)
    assert path.stat().st_size > 40_000_000


async def test_the_images_dialect_says_which_dialect_to_try(relay):
    """A relay without the route answers 404: the error suggests another dialect."""
    relay.script(Fault.status(404, message="Invalid URL (POST /v1/images/generations)"))
    async with client_for(relay, "images") as client:
        with pytest.raises(gi.BadRequestError) as caught:
            await client.generate("a fox")
    assert "dialect='chat'" in str(caught.value)


async def test_only_imagen_models_points_to_the_chat_dialect(relay):
    """new-api's "only imagen models are supported" names the chat dialect as the way."""
    relay.script(
        Fault.status(
            500,
            message="not supported model for image generation, only imagen models are supported",
        )
    )
    async with client_for(relay, "images", retry=gi.RetryPolicy.never()) as client:
        with pytest.raises(gi.ServerError) as caught:
            await client.generate("a fox")
    assert "dialect='chat'" in str(caught.value)


# --- what you asked vs what you got -----------------------------------------------------------


@pytest.fixture
async def pixels_relay():
    """A relay that reads only pixel sizes, as LiteLLM does: ratios and -4k names are dropped."""
    async with FakeRelay(api_keys=frozenset({API_KEY}), sizes="pixels") as relay:
        yield relay


async def test_pixel_sizes_get_16_9_at_4k_from_a_relay_that_honours_only_pixels(pixels_relay):
    """With size_style="pixels", a 16:9 4K request comes back 16:9 at the 4K tier."""
    async with client_for(pixels_relay, "images", size_style="pixels") as client:
        result = await client.generate_4k("a harbour", size="16:9", response_format="b64_json")
    assert pixels_relay.requests[0].size == "5504x3072"
    [delivered] = result.delivered
    assert (delivered.width, delivered.height) == (5504, 3072)
    assert delivered.tier == "4K"
    assert not result.downgraded


async def test_without_pixel_sizes_the_same_relay_is_recorded_as_a_downgrade(pixels_relay, caplog):
    """With ratios, that relay answers 1:1 at 1K: the result says it came back smaller and
    another shape, and a warning says so."""
    async with client_for(pixels_relay, "images") as client:
        result = await client.generate_4k("a harbour", size="16:9", response_format="b64_json")
    [delivered] = result.delivered
    assert delivered.smaller
    assert delivered.other_shape
    assert result.downgraded
    assert str(result.asked) == "4K 16:9 (5504x3072)"
    assert any("downgraded" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("style", "sent"),
    [
        ("ratio", {"size": "16:9"}),
        ("pixels", {"size": "2752x1536"}),
        ("image_config", {"image_config": {"aspect_ratio": "16:9", "image_size": "2K"}}),
    ],
)
async def test_size_styles_of_the_images_dialect(relay, style, sent):
    """Each size style puts the ratio and tier where that kind of relay reads them."""
    async with client_for(relay, "images", size_style=style) as client:
        result = await client.generate_2k("a fox", size="16:9", response_format="b64_json")
    body = relay.requests[0].body
    assert {key: body[key] for key in sent} == sent
    assert result.delivered[0].as_asked


@pytest.mark.parametrize(
    ("style", "sent"),
    [
        ("image_config", {"image_config": {"aspect_ratio": "9:16", "image_size": "4K"}}),
        (
            "google",
            {
                "extra_body": {
                    "google": {"image_config": {"aspect_ratio": "9:16", "image_size": "4K"}}
                }
            },
        ),
    ],
)
async def test_size_styles_of_the_chat_dialect(relay, style, sent):
    """Chat sends the tier in an image config on the base model name."""
    async with client_for(relay, "chat", size_style=style) as client:
        result = await client.generate_4k("a fox", size="9:16", response_format="b64_json")
    body = relay.requests[0].body
    assert body["model"] == STANDARD
    assert {key: body[key] for key in sent} == sent
    assert result.delivered[0].as_asked


async def test_extra_body_is_merged_into_the_request(relay, dialect):
    """extra_body= adds the relay's own fields, merging objects key by key."""
    extra = {"safety": "off", "generationConfig": {"temperature": 0.5}}
    async with client_for(relay, dialect) as client:
        await client.generate("a fox", extra_body=extra, response_format="b64_json")
    body = relay.requests[0].body
    assert body["safety"] == "off"
    assert body["generationConfig"]["temperature"] == 0.5
    if dialect == "gemini":
        assert body["generationConfig"]["responseModalities"] == ["IMAGE"]


async def test_a_bad_extra_body_is_refused_before_sending(relay):
    """extra_body must be a JSON object: anything else is a ValidationError, nothing sent."""
    async with client_for(relay, "chat") as client:
        with pytest.raises(gi.ValidationError):
            await client.generate("a fox", extra_body={"when": object()})
    assert relay.generation_count == 0


async def test_a_client_says_its_dialect(relay):
    """repr(client) names the dialect it speaks."""
    async with client_for(relay, "gemini") as client:
        assert "dialect='gemini'" in repr(client)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dialect": "soap"}, "dialect must be one of"),
        ({"dialect": "images", "size_style": "google"}, "size_style for the images dialect"),
        ({"dialect": "gemini", "size_style": "pixels"}, "gemini dialect always sends"),
    ],
)
def test_bad_dialect_settings_are_configuration_errors(relay, kwargs, match):
    """An unknown dialect or a size style it cannot speak raises ConfigurationError."""
    with pytest.raises(gi.ConfigurationError, match=match):
        gi.Client(API_KEY, relay.url, **kwargs)


async def test_results_of_every_dialect_pickle(relay, dialect):
    """A result pickles whole, whatever dialect made it."""
    import pickle  # noqa: PLC0415 - only this test needs it

    async with client_for(relay, dialect) as client:
        result = await client.generate("a fox", response_format="b64_json")
    again = pickle.loads(pickle.dumps(result))  # noqa: S301 - our own value
    assert again == result
    assert again.usage == result.usage
    assert json.dumps(again.request.to_json())
