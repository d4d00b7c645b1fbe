"""Dialects (`_dialects`): the base URL a user gives, and the requests each dialect writes."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gemimg_async import ASPECT_RATIOS, Client, ConfigurationError, ImageRequest, Model
from gemimg_async._dialects import ImagesDialect
from gemimg_async._dialects import base_url as relay_base
from helpers import API_KEY, TIER_2K

pytestmark = pytest.mark.anyio

PROMPT_ZH = "一只在雪地里的红狐狸，电影感光线，"  # noqa: RUF001 - Chinese punctuation, as relays write it


def body(request, images):
    """The images dialect's body for `request` with `images` as the encoded inputs."""
    return ImagesDialect().body(request, images)


def images_url(url, **kwargs):
    """The URL the images dialect posts to under the base URL `url`."""
    return ImagesDialect().outgoing(relay_base(url, **kwargs), ImageRequest("a fox"), []).url


# --- base_url ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "endpoint"),
    [
        ("https://api.example.com", "https://api.example.com/v1/images/generations"),
        ("https://api.example.com/", "https://api.example.com/v1/images/generations"),
        ("https://api.example.com/v1", "https://api.example.com/v1/images/generations"),
        ("https://api.example.com/v1/", "https://api.example.com/v1/images/generations"),
        ("  https://api.example.com/v1  ", "https://api.example.com/v1/images/generations"),
        ("https://api.example.com:8443", "https://api.example.com:8443/v1/images/generations"),
        ("https://example.com/openai", "https://example.com/openai/v1/images/generations"),
        ("https://example.com/openai/v1", "https://example.com/openai/v1/images/generations"),
        ("https://api.example.com/v1?x=1#top", "https://api.example.com/v1/images/generations"),
        ("http://localhost:8080", "http://localhost:8080/v1/images/generations"),
        ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1/images/generations"),
        ("http://127.8.0.1", "http://127.8.0.1/v1/images/generations"),
        ("http://[::1]:9", "http://[::1]:9/v1/images/generations"),
    ],
)
def test_images_endpoint_with_or_without_v1(base_url, endpoint):
    """The generations endpoint is found under a base URL written with or without /v1."""
    assert str(images_url(base_url)) == endpoint


@pytest.mark.parametrize(
    "base_url",
    ["", "api.example.com", "ftp://api.example.com", "https://", "file:///etc/passwd", "://x"],
)
def test_base_url_rejects_what_is_no_http_url(base_url):
    """Anything but an http(s) URL with a host raises ConfigurationError."""
    with pytest.raises(ConfigurationError):
        relay_base(base_url)


@pytest.mark.parametrize(
    "base_url", ["http://api.example.com", "http://192.168.1.10:3000", "http://127.0.0.1.nip.io"]
)
def test_plain_http_to_another_host_needs_opting_in(base_url):
    """http:// to a non-loopback host raises ConfigurationError unless allow_insecure_http."""
    with pytest.raises(ConfigurationError, match="allow_insecure_http"):
        relay_base(base_url)
    assert images_url(base_url, allow_insecure_http=True).path.endswith("/v1/images/generations")


def test_base_url_error_is_a_configuration_error_not_a_crash():
    """A base URL yarl cannot parse raises ConfigurationError."""
    with pytest.raises(ConfigurationError):
        relay_base("https://[not-an-ip")


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
        Client(API_KEY, base_url)
    assert API_KEY not in str(info.value)
    async with Client(API_KEY, base_url, allow_insecure_http=True):
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
    async with Client(API_KEY, base_url) as client:
        assert API_KEY not in repr(client)


# --- the images dialect: the wire body ---------------------------------------------------------


def test_body_holds_the_documented_fields():
    """body() sends model, prompt, size, response_format and n; never id or allow_any_size."""
    request = ImageRequest(
        "a fox", model="2k", size="3:2", n=2, response_format="b64_json", id="fox"
    )
    assert json.loads(body(request, [])) == {
        "model": TIER_2K,
        "prompt": "a fox",
        "size": "3:2",
        "response_format": "b64_json",
        "n": 2,
    }


def test_body_without_size_has_no_size():
    """No size given means no size field."""
    assert "size" not in json.loads(body(ImageRequest("a fox"), []))


def test_body_sends_one_image_as_a_string_and_several_as_a_list():
    """One input image is sent as a string, several as an array."""
    request = ImageRequest("a fox")
    assert json.loads(body(request, ["https://a"]))["image"] == "https://a"
    assert json.loads(body(request, ["https://a", "https://b"]))["image"] == [
        "https://a",
        "https://b",
    ]


def test_body_is_utf8_not_escaped():
    """A Chinese prompt is sent as UTF-8, not \\u escapes."""
    written = body(ImageRequest("一只狐狸"), [])
    assert "一只狐狸".encode() in written
    assert json.loads(written)["prompt"] == "一只狐狸"


REQUESTS = st.builds(
    ImageRequest,
    st.text(min_size=1).filter(lambda text: any(c.isprintable() and not c.isspace() for c in text)),
    model=st.sampled_from([*Model, "2k", "standard", "4K", "custom-model"]),
    size=st.sampled_from([None, *ASPECT_RATIOS, "16x9"]),
    n=st.integers(1, 8),
    images=st.lists(st.sampled_from(["https://example.com/a.png", "http://x/y"]), max_size=14),
    response_format=st.sampled_from(["url", "b64_json"]),
    allow_any_size=st.booleans(),
)


@given(REQUESTS)
def test_body_is_valid_json_of_the_request(request):
    """body() is JSON whose fields match the request."""
    doc = json.loads(body(request, list(request.images)))
    assert doc["model"] == request.model
    assert doc["prompt"] == request.prompt
    assert doc["n"] == request.n
    assert doc.get("size") == request.size
    assert set(doc) <= {"model", "prompt", "size", "response_format", "n", "image"}


async def test_no_size_sends_no_size(relay, client):
    """Without size= the request carries no size field."""
    await client.generate("a fox")
    assert relay.requests[-1].size is None


async def test_chinese_and_long_prompts_arrive_intact(relay, client):
    """A long Chinese prompt reaches the relay unchanged."""
    prompt = PROMPT_ZH * 300
    await client.generate(prompt)
    assert relay.requests[-1].prompt == prompt
