"""Request and result values (`_models`): model names, validation, normalisation, JSON; and the
same rules end to end, where bad input never reaches the relay.
"""

import base64
import json

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gemimg_async import (
    ASPECT_RATIOS,
    MAX_INLINE_IMAGE_BYTES,
    MAX_INPUT_IMAGES,
    BadRequestError,
    GeneratedImage,
    ImageRequest,
    InvalidCountError,
    InvalidImageError,
    InvalidModelError,
    InvalidPromptError,
    InvalidResponseFormatError,
    InvalidSizeError,
    Model,
    Timings,
    TooManyImagesError,
    ValidationError,
    resolve_model,
)
from gemimg_async._models import data_uri
from gemimg_async.testing import FakeRelay, pixel_size, png
from helpers import (
    API_KEY,
    PROMPT_4K,
    STANDARD,
    TIER_2K,
    TIER_4K,
    bytes_id,
    file_png_size,
    gif,
    jpeg,
    once,
    uri,
    webp_lossless,
    webp_lossy,
)

pytestmark = pytest.mark.anyio


# --- models ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "full"),
    [
        (Model.STANDARD, STANDARD),
        (Model.RES_2K, TIER_2K),
        (Model.RES_4K, TIER_4K),
        ("standard", STANDARD),
        ("2k", TIER_2K),
        ("4k", TIER_4K),
        ("2K", TIER_2K),
        (" 4K ", TIER_4K),
        ("Standard", STANDARD),
        (STANDARD, STANDARD),
        (TIER_2K, TIER_2K),
        (TIER_4K, TIER_4K),
    ],
)
def test_resolve_model_accepts_members_aliases_and_full_names(given, full):
    """A Model member, an alias (any case) or a full name resolves to the full model name."""
    assert resolve_model(given) == full
    assert type(resolve_model(given)) is str


@pytest.mark.parametrize("name", ["gemini-3-pro-image-preview-hd", "my-relay/Model_X", "8k"])
def test_unknown_model_names_pass_through(name):
    """A name that is no member or alias is sent unchanged."""
    assert resolve_model(name) == name
    assert ImageRequest("a fox", model=name).model == name


@pytest.mark.parametrize("bad", ["", "   ", None, 4, b"4k"])
def test_resolve_model_rejects_what_is_no_name(bad):
    """An empty or non-string model raises InvalidModelError."""
    with pytest.raises(InvalidModelError):
        resolve_model(bad)


def test_model_members_are_the_documented_names():
    """The three tiers' values are the relay's model names, and compare equal to them."""
    assert [m.value for m in Model] == [STANDARD, TIER_2K, TIER_4K]
    assert Model.RES_4K == TIER_4K


async def test_unknown_full_model_name_passes_through(tmp_path):
    """A model name the client does not know is sent unchanged."""
    async with (
        FakeRelay(api_keys=API_KEY, extra_models="gemini-3-pro-image-preview-hd") as relay,
        once(relay.url) as client,
    ):
        result = await client.generate("a fox", model="gemini-3-pro-image-preview-hd")
    assert relay.requests[-1].model == "gemini-3-pro-image-preview-hd"
    assert result.request.model == "gemini-3-pro-image-preview-hd"


@pytest.mark.parametrize(
    ("model", "full_name", "size", "pixels"),
    [
        (Model.STANDARD, STANDARD, "16:9", (1376, 768)),
        ("standard", STANDARD, "1:1", (1024, 1024)),
        (Model.RES_2K, TIER_2K, "9:16", (1536, 2752)),
        ("2k", TIER_2K, "4:3", (2400, 1792)),
        (TIER_2K, TIER_2K, "2:3", (1696, 2528)),
        ("4k", TIER_4K, "21:9", (6336, 2688)),
        (Model.RES_4K, TIER_4K, "21:9", (6336, 2688)),
    ],
)
async def test_every_tier_gives_its_pixel_size(  # noqa: PLR0917 - pytest fills these by name
    relay, client, tmp_path, model, full_name, size, pixels
):
    """Each tier, named by member, alias or full name, gives a PNG of Google's size for it."""
    prompt = PROMPT_4K if full_name == TIER_4K else "a lighthouse"
    result = await client.generate(prompt, model=model, size=size, save_to=tmp_path)
    assert relay.requests[-1].model == full_name
    assert result.request.model == full_name
    assert pixels == pixel_size(full_name, size)
    assert file_png_size(result.paths[0]) == pixels
    assert (result.images[0].width, result.images[0].height) == pixels


# --- ImageRequest: defaults and normalisation --------------------------------------------------


def test_request_defaults():
    """A bare request is the standard model, url, one image, no size, no inputs."""
    request = ImageRequest("a fox")
    assert request.model == STANDARD
    assert request.size is None
    assert request.n == 1
    assert request.images == ()
    assert request.response_format == "url"
    assert request.id is None


@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
@pytest.mark.parametrize("template", ["{}:{}", "{}x{}", "{}X{}", "{}\u00d7{}", " {} : {} "])
def test_sizes_normalise_to_w_colon_h(ratio, template):
    """Every documented ratio written W:H, WxH, WXH, with a times sign or spaced is W:H."""
    width, height = ratio.split(":")
    assert ImageRequest("a fox", size=template.format(width, height)).size == ratio


def test_documented_ratios_are_the_api_list():
    """ASPECT_RATIOS is exactly the relay contract's list."""
    assert ASPECT_RATIOS == (
        "1:1",
        "2:3",
        "3:2",
        "3:4",
        "4:3",
        "4:5",
        "5:4",
        "9:16",
        "16:9",
        "21:9",
    )


@pytest.mark.parametrize(
    "size", ["", "16", "16:", ":9", "16:9:1", "a:b", "-1:1", "1.5:1", "1024x1024", "16/9", 169]
)
def test_malformed_sizes_raise(size):
    """A size that is not W:H raises InvalidSizeError."""
    with pytest.raises(InvalidSizeError):
        ImageRequest("a fox", size=size)


@pytest.mark.parametrize("size", ["7:3", "2:1", "3:1", "1:2", "32:9", "2:2"])
def test_undocumented_ratios_raise_unless_allowed(size):
    """A well-formed ratio outside the list raises, and passes with allow_any_size=True."""
    with pytest.raises(InvalidSizeError, match="allow_any_size"):
        ImageRequest("a fox", size=size)
    assert ImageRequest("a fox", size=size, allow_any_size=True).size == size


@pytest.mark.parametrize("size", ["0:1", "1:0", "0:0", "00:1", "1:00", "000:7"])
def test_zero_sides_raise_even_with_allow_any_size(size):
    """A ratio with a zero side is never sent, allow_any_size or not."""
    with pytest.raises(InvalidSizeError):
        ImageRequest("a fox", size=size, allow_any_size=True)


def test_leading_zeros_are_dropped():
    """016:009 is 16:9."""
    assert ImageRequest("a fox", size="016:009").size == "16:9"


@pytest.mark.parametrize(("given", "sent"), [("1x1", "1:1"), ("16X9", "16:9"), (" 3 : 4 ", "3:4")])
async def test_size_is_normalised_to_w_colon_h(relay, client, given, sent):
    """1x1-style sizes are sent as W:H."""
    result = await client.generate("a fox", size=given)
    assert relay.requests[-1].size == sent
    assert result.request.size == sent


async def test_undocumented_ratio_is_sent_with_allow_any_size(relay):
    """allow_any_size=True sends an undocumented ratio as it is (this relay then rejects it)."""
    async with once(relay.url) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.generate("a fox", size="7:3", allow_any_size=True)
    assert relay.requests[-1].size == "7:3"
    assert caught.value.status == 400


# --- ImageRequest: validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    ["", " ", "\n\t ", "\x00\x00", "\u200b\u200c\u200d", " \ufeff\u2060\x1b ", None, 42, b"a fox"],
)
def test_bad_prompts_raise(prompt):
    """An empty, blank, invisible (NULs, zero-width and control characters only) or non-string
    prompt raises InvalidPromptError."""
    with pytest.raises(InvalidPromptError):
        ImageRequest(prompt)


def test_prompt_is_kept_exactly():
    """A prompt is sent as written: no stripping, Chinese intact."""
    prompt = "  一只狐狸 in the snow \n"
    assert ImageRequest(prompt).prompt == prompt


@pytest.mark.parametrize("n", [0, -1, True, False, 1.0, "2", None])
def test_bad_counts_raise(n):
    """n that is not a whole number of at least 1 (bools included) raises InvalidCountError."""
    with pytest.raises(InvalidCountError):
        ImageRequest("a fox", n=n)


@pytest.mark.parametrize("n", [1, 2, 4, 10])
def test_good_counts_pass(n):
    """Any whole n >= 1 is accepted (relays may answer fewer)."""
    assert ImageRequest("a fox", n=n).n == n


@pytest.mark.parametrize("response_format", ["png", "URL", "b64", "", None, "json"])
def test_bad_response_formats_raise(response_format):
    """Only "url" and "b64_json" are response formats."""
    with pytest.raises(InvalidResponseFormatError):
        ImageRequest("a fox", response_format=response_format)


@pytest.mark.parametrize("identifier", ["", ".hidden", "-x", "a/b", "../up", "a b", "x" * 129, 7])
def test_bad_ids_raise(identifier):
    """An id that could not safely name a file raises ValidationError."""
    with pytest.raises(ValidationError):
        ImageRequest("a fox", id=identifier)


@pytest.mark.parametrize(
    "bad_id", ["../x", "a/b", "/etc/passwd", "a\\b", "..", ".hidden", "-rf", "", "x\x00y", "a/../b"]
)
def test_ids_that_are_not_plain_names_are_rejected(bad_id):
    """A request id that could leave the folder (or hide in it) is refused up front."""
    with pytest.raises(ValidationError):
        ImageRequest("a fox", id=bad_id)


@pytest.mark.parametrize("identifier", ["poster", "job_7.v2", "A-1", "x" * 128])
def test_good_ids_pass(identifier):
    """Letters, digits, '.', '_' and '-' make an id."""
    assert ImageRequest("a fox", id=identifier).id == identifier


@pytest.mark.parametrize("key", ["", "has space", "line\nbreak", "x" * 256, "caf\u00e9"])
def test_an_idempotency_key_that_is_no_header_token_is_refused(key):
    """An idempotency key that could not travel as a header value raises ValidationError."""
    with pytest.raises(ValidationError):
        ImageRequest("a fox", idempotency_key=key)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"prompt": ""}, InvalidPromptError),
        ({"prompt": "   \n\t"}, InvalidPromptError),
        ({"n": 0}, InvalidCountError),
        ({"n": -2}, InvalidCountError),
        ({"n": True}, InvalidCountError),
        ({"n": 1.5}, InvalidCountError),
        ({"size": "banana"}, InvalidSizeError),
        ({"size": "16:"}, InvalidSizeError),
        ({"size": "0:1"}, InvalidSizeError),
        ({"size": "1024x1024"}, InvalidSizeError),
        ({"size": "7:3"}, InvalidSizeError),
        ({"size": "2:1"}, InvalidSizeError),
        ({"response_format": "png"}, InvalidResponseFormatError),
        ({"response_format": "b64"}, InvalidResponseFormatError),
        ({"model": ""}, InvalidModelError),
        ({"model": "   "}, InvalidModelError),
        ({"images": [f"https://example.com/{i}.png" for i in range(15)]}, TooManyImagesError),
        ({"images": b"this is not an image"}, InvalidImageError),
        ({"images": [b""]}, InvalidImageError),
        ({"images": ["data:image/png;base64,aGVsbG8gd29ybGQh"]}, InvalidImageError),
        ({"images": ["data:text/plain;base64,aGVsbG8="]}, InvalidImageError),
        ({"images": [b"\x89PNG\r\n\x1a\n" + b"\x00" * (8 * 1024 * 1024)]}, InvalidImageError),
    ],
)
async def test_bad_input_raises_before_sending(relay, client, kwargs, error):
    """Each kind of bad input raises its own ValidationError and the relay receives nothing."""
    kwargs = {"prompt": "a lighthouse", **kwargs}
    with pytest.raises(error) as caught:
        await client.generate(kwargs.pop("prompt"), **kwargs)
    assert isinstance(caught.value, ValidationError)
    assert isinstance(caught.value, ValueError)
    assert relay.requests == []


async def test_invalid_requests_are_never_sent(relay, client):
    """A request that fails validation costs nothing: the relay sees no request."""
    with pytest.raises(InvalidPromptError):
        await client.generate("   ")
    assert relay.generation_count == 0


# --- ImageRequest: input images ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (png(), "image/png"),
        (jpeg(), "image/jpeg"),
        (webp_lossless(5, 6), "image/webp"),
        (webp_lossy(5, 6), "image/webp"),
        (gif(7, 8), "image/gif"),
        (gif(7, 8, b"87a"), "image/gif"),
    ],
    ids=bytes_id,
)
def test_bytes_become_a_data_uri_typed_by_magic(data, media_type):
    """Image bytes become a base64 data URI whose MIME type comes from the bytes."""
    assert ImageRequest("a fox", images=data).images == (uri(data, media_type),)
    assert data_uri(data, source="x") == uri(data, media_type)


@pytest.mark.parametrize(
    "data", [b"", b"hello world, not an image", b"<html></html>", b"RIFF\x00\x00\x00\x00WAVEfmt "]
)
def test_bytes_that_are_no_image_raise(data):
    """Bytes that are not PNG/JPEG/WEBP/GIF raise InvalidImageError."""
    with pytest.raises(InvalidImageError):
        ImageRequest("a fox", images=[data])


def test_inline_limit_is_inclusive():
    """Bytes of exactly the inline limit are taken; one byte more raises InvalidImageError."""
    at_limit = png() + bytes(MAX_INLINE_IMAGE_BYTES - len(png()))
    assert ImageRequest("a fox", images=[at_limit]).images[0].startswith("data:image/png;")
    with pytest.raises(InvalidImageError, match="MB"):
        ImageRequest("a fox", images=[at_limit + b"\x00"])


def test_urls_and_data_uris_are_kept_as_given():
    """http(s) URLs and valid data URIs are kept exactly."""
    given = ["https://example.com/a.png?sig=x", "http://example.com/b", uri(jpeg(), "image/jpeg")]
    assert ImageRequest("a fox", images=given).images == tuple(given)


def test_paths_are_kept_as_paths_until_sent(tmp_path):
    """A local path (str or Path) is kept as its string and read only when sent."""
    later = tmp_path / "not-yet.png"
    request = ImageRequest("a fox", images=[later, str(later)])
    assert request.images == (str(later), str(later))


def test_a_single_image_may_be_given_bare():
    """images="https://..." is one image, not a sequence of characters."""
    assert ImageRequest("a fox", images="https://example.com/a.png").images == (
        "https://example.com/a.png",
    )


@pytest.mark.parametrize(
    "image",
    [
        "data:image/png,rawbytes",
        "data:text/plain;base64,aGVsbG8=",
        "data:image/png;base64,%%%%not-base64%%%%",
        uri(b"hello world, this is text not an image"),
        "",
        None,
        123,
    ],
)
def test_bad_image_references_raise(image):
    """A malformed, mislabelled or non-image data URI, or a non-reference, raises."""
    with pytest.raises(InvalidImageError):
        ImageRequest("a fox", images=[image])


@pytest.mark.parametrize(
    ("given", "labelled"),
    [
        (f"data:;base64,{base64.b64encode(png()).decode()}", uri(png())),
        (uri(png(), "image/jpeg"), uri(png())),
        (uri(jpeg(), "image/png"), uri(jpeg(), "image/jpeg")),
        (uri(gif(2, 2), "image/webp"), uri(gif(2, 2), "image/gif")),
        (uri(png(), "IMAGE/PNG"), uri(png())),
    ],
)
def test_data_uris_are_labelled_by_their_bytes(given, labelled):
    """A data URI with no or the wrong MIME type is relabelled with the type its bytes show."""
    assert ImageRequest("a fox", images=[given]).images == (labelled,)


def test_oversized_data_uri_raises():
    """A data URI holding more than the inline limit raises InvalidImageError."""
    big = uri(png() + bytes(MAX_INLINE_IMAGE_BYTES))
    with pytest.raises(InvalidImageError, match="MB"):
        ImageRequest("a fox", images=[big])


def test_fourteen_images_pass_fifteen_raise():
    """Up to 14 input images are accepted; 15 raise TooManyImagesError."""
    urls = [f"https://example.com/{i}.png" for i in range(MAX_INPUT_IMAGES + 1)]
    assert MAX_INPUT_IMAGES == 14
    assert len(ImageRequest("a fox", images=urls[:14]).images) == 14
    with pytest.raises(TooManyImagesError) as caught:
        ImageRequest("a fox", images=urls)
    assert isinstance(caught.value, InvalidImageError)


# --- ImageRequest: values ----------------------------------------------------------------------


def test_requests_are_frozen_and_hashable():
    """A request cannot be changed, and can be a dict key."""
    request = ImageRequest("a fox", images=["https://example.com/a.png"])
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        request.prompt = "a wolf"
    assert {request: 1}[ImageRequest("a fox", images=("https://example.com/a.png",))] == 1


def test_equal_requests_however_written():
    """Aliases, members and full names, and 16x9 vs 16:9, make equal requests."""
    assert ImageRequest("a fox", model="4k", size="16x9") == ImageRequest(
        "a fox", model=Model.RES_4K, size="16:9"
    )


def test_repr_shortens_inline_images():
    """A request's repr shows a long data URI shortened, not megabytes of base64."""
    data = png() + bytes(200_000)
    text = repr(ImageRequest("a fox", images=[data]))
    assert len(text) < 500
    assert "data:image/png;base64," in text


# --- ImageRequest: JSON ------------------------------------------------------------------------


def test_to_json_keeps_only_what_differs_from_the_defaults():
    """to_json() writes the prompt and the fields that are not defaults, JSON-ready."""
    request = ImageRequest("a fox", model="4k", size="1x1", images=["https://example.com/a.png"])
    doc = request.to_json()
    assert doc == {
        "prompt": "a fox",
        "model": TIER_4K,
        "size": "1:1",
        "images": ["https://example.com/a.png"],
    }
    assert json.loads(json.dumps(doc)) == doc


def test_to_json_of_a_bare_request_is_the_prompt():
    """The JSON of a default request is just its prompt."""
    assert ImageRequest("a fox").to_json() == {"prompt": "a fox"}


REQUESTS = st.builds(
    ImageRequest,
    st.text(min_size=1).filter(lambda text: any(c.isprintable() and not c.isspace() for c in text)),
    model=st.sampled_from([*Model, "2k", "standard", "4K", "custom-model"]),
    size=st.sampled_from([None, *ASPECT_RATIOS, "16x9"]),
    n=st.integers(1, 8),
    images=st.lists(
        st.sampled_from(
            ["https://example.com/a.png", "http://x/y", uri(png()), uri(gif(1, 1), "image/gif")]
        ),
        max_size=MAX_INPUT_IMAGES,
    ),
    response_format=st.sampled_from(["url", "b64_json"]),
    id=st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True)),
    allow_any_size=st.booleans(),
)


@given(REQUESTS)
def test_json_round_trip(request):
    """from_json(to_json(r)) == r for any valid request, through real JSON text."""
    assert ImageRequest.from_json(json.loads(json.dumps(request.to_json()))) == request


def test_from_json_takes_image_as_string_or_list():
    """from_json() reads the wire name "image", a string or an array."""
    one = ImageRequest.from_json({"prompt": "a fox", "image": "https://example.com/a.png"})
    many = ImageRequest.from_json({"prompt": "a fox", "image": ["https://a/1", "https://a/2"]})
    assert one.images == ("https://example.com/a.png",)
    assert many.images == ("https://a/1", "https://a/2")


def test_from_json_rejects_unknown_fields():
    """A misspelt field is an error, not silently dropped."""
    with pytest.raises(ValueError, match="quality"):
        ImageRequest.from_json({"prompt": "a fox", "quality": "hd"})


def test_from_json_validates():
    """from_json() applies the same validation as the constructor."""
    with pytest.raises(InvalidSizeError):
        ImageRequest.from_json({"prompt": "a fox", "size": "7:3"})
    with pytest.raises(InvalidPromptError):
        ImageRequest.from_json({"prompt": ""})


def test_an_idempotency_key_round_trips_through_json():
    """A request's own idempotency key survives to_json/from_json."""
    request = ImageRequest("a fox", idempotency_key="job-7-attempt")
    assert ImageRequest.from_json(request.to_json()) == request


# --- GeneratedImage and Timings ----------------------------------------------------------------


def test_generated_image_repr_hides_bytes():
    """A GeneratedImage's repr gives its byte count, not its bytes."""
    text = repr(GeneratedImage(0, data=b"\x89PNG" + bytes(10_000)))
    assert "10004 bytes" in text
    assert len(text) < 300


def test_generated_images_are_frozen():
    """A GeneratedImage cannot be changed."""
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        GeneratedImage(0).url = "https://x"


def test_timings_total_is_the_sum_of_phases():
    """Timings.total adds queued, generating and saving."""
    assert Timings(1.5, 2.0, 0.25).total == 3.75
    assert Timings().total == 0.0
