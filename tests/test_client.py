"""The client end to end, against the fake relay over real sockets on 127.0.0.1."""

import base64
import logging
import os
import socket
import struct
import traceback
import zlib
from pathlib import Path

import anyio
import attrs
import pytest

import gemimg_async as gi
from gemimg_async import (
    ENV_API_KEY,
    ENV_BASE_URL,
    APIError,
    AuthenticationError,
    BadRequestError,
    Client,
    ClientClosedError,
    ConfigurationError,
    ConnectError,
    ContentPolicyError,
    DownloadError,
    GemimgError,
    GeneratedImage,
    GenerationResult,
    ImageExpiredError,
    ImageRequest,
    InvalidCountError,
    InvalidImageError,
    InvalidModelError,
    InvalidPromptError,
    InvalidResponseFormatError,
    InvalidSizeError,
    MalformedResponseError,
    Model,
    OutcomeUnknownError,
    RateLimitError,
    RefusalError,
    RetryPolicy,
    ServerError,
    Timeouts,
    Timings,
    TooManyImagesError,
    TransportError,
    ValidationError,
)
from gemimg_async.testing import QUIRKS, FakeClock, FakeRelay, Fault, pixel_size
from gemimg_async.testing import png as tiny_png

pytestmark = pytest.mark.anyio

API_KEY = "sk-test"  # what the shared relay (conftest) accepts
SECRET = "sk-live-7Hq2ZxVb94LmTpQe0sSecretKeyDoNotLeak"
STANDARD = "gemini-3-pro-image-preview"
TIER_2K = "gemini-3-pro-image-preview-2k"
TIER_4K = "gemini-3-pro-image-preview-4k"
PROMPT_4K = "a harbour at night, 4K"  # one prompt, so the relay renders each 4K image once
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BLOCKED_ZH = "提示词包含违规内容，请修改后重试"  # noqa: RUF001 - Chinese punctuation, as relays write it
OVERLOADED_ZH = "当前分组上游负载已饱和，请稍后再试"  # noqa: RUF001 - Chinese punctuation, as relays write it
PROMPT_ZH = "一只在雪地里的红狐狸，电影感光线，"  # noqa: RUF001 - Chinese punctuation, as relays write it


# --- helpers -----------------------------------------------------------------------------------


def bytes_id(value: object) -> str | None:
    """A short test id for a long bytes parameter (pytest would print every byte)."""
    return f"{len(value)}-bytes" if isinstance(value, bytes) and len(value) > 16 else None


def tiny_jpeg(width: int = 4, height: int = 3) -> bytes:
    """A JPEG header (SOI, APP0, SOF0) and EOI: enough for magic-byte sniffing."""
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = (
        b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", height, width) + b"\x03" + b"\x01\x11\x00" * 3
    )
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def tiny_webp(width: int = 5, height: int = 6) -> bytes:
    """A lossless WEBP header with its canvas size."""
    bits = (width - 1) | ((height - 1) << 14)
    payload = b"\x2f" + bits.to_bytes(4, "little") + b"\x00" * 11
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def tiny_gif(width: int = 7, height: int = 8) -> bytes:
    """A GIF89a header with its logical screen size."""
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b"\x3b" * 8


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, read by hand."""
    assert data[:8] == PNG_SIGNATURE, data[:16]
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def file_png_size(path: Path) -> tuple[int, int]:
    with path.open("rb") as file:
        return png_size(file.read(24))


def png_pixels_intact(path: Path) -> bool:
    """Whether every chunk's CRC holds and the image data inflates to width x height pixels."""
    data = path.read_bytes()
    width, height = png_size(data)
    pos, idat = 8, bytearray()
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(body, zlib.crc32(kind)) != crc:
            return False
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    return len(zlib.decompress(idat)) == height * (1 + 3 * width)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def once(base_url: str, key: str = API_KEY, **kwargs) -> Client:
    """A client that sends every request exactly once, with instant sleeps."""
    return Client(key, base_url, retry=RetryPolicy.never(), clock=FakeClock(), **kwargs)


def texts_of(error: BaseException) -> list[str]:
    """str and repr of an error and of every error chained to it, and its full traceback."""
    texts, seen, current = [], set(), error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), *map(str, current.args)]
        current = current.__cause__ or current.__context__
    texts.append("".join(traceback.format_exception(error)))
    return texts


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".part"]


# --- configuration -----------------------------------------------------------------------------


async def test_key_and_base_url_fall_back_to_the_environment(relay, monkeypatch):
    """Without arguments, the client reads GEMIMG_API_KEY and GEMIMG_BASE_URL."""
    monkeypatch.setenv(ENV_API_KEY, API_KEY)
    monkeypatch.setenv(ENV_BASE_URL, relay.url)
    async with Client(clock=FakeClock()) as client:
        result = await client.generate("a lighthouse")
    assert len(result.images) == 1
    assert relay.requests[-1].authorized


async def test_arguments_win_over_the_environment(relay, monkeypatch):
    """api_key= and base_url= take precedence over the environment variables."""
    monkeypatch.setenv(ENV_API_KEY, "sk-wrong")
    monkeypatch.setenv(ENV_BASE_URL, f"http://127.0.0.1:{closed_port()}")
    async with Client(API_KEY, relay.url, clock=FakeClock()) as client:
        await client.generate("a lighthouse")
    assert relay.requests[-1].authorized


async def test_missing_key_raises_configuration_error(relay, monkeypatch):
    """No key anywhere raises ConfigurationError naming GEMIMG_API_KEY."""
    monkeypatch.delenv(ENV_API_KEY, raising=False)
    with pytest.raises(ConfigurationError, match=ENV_API_KEY):
        Client(base_url=relay.url)


async def test_missing_base_url_raises_configuration_error(monkeypatch):
    """No base URL anywhere raises ConfigurationError naming GEMIMG_BASE_URL."""
    monkeypatch.delenv(ENV_BASE_URL, raising=False)
    with pytest.raises(ConfigurationError, match=ENV_BASE_URL):
        Client(API_KEY)


async def test_empty_environment_variables_count_as_missing(monkeypatch):
    """Empty GEMIMG_* variables raise ConfigurationError, not a broken client."""
    monkeypatch.setenv(ENV_API_KEY, "")
    monkeypatch.setenv(ENV_BASE_URL, "")
    with pytest.raises(ConfigurationError):
        Client()


@pytest.mark.parametrize("key", [" sk-test", "sk-test\n", "sk test"])
async def test_key_with_whitespace_raises_configuration_error(relay, key):
    """A key pasted with whitespace is refused up front."""
    with pytest.raises(ConfigurationError):
        Client(key, relay.url)


@pytest.mark.parametrize("base_url", ["ftp://example.com", "example.com", "https://"])
async def test_unusable_base_url_raises_configuration_error(base_url):
    """A base URL that is not an http(s) URL raises ConfigurationError."""
    with pytest.raises(ConfigurationError):
        Client(API_KEY, base_url)


async def test_plain_http_to_a_remote_host_is_refused():
    """http:// to a non-loopback host would leak the key: ConfigurationError."""
    with pytest.raises(ConfigurationError, match="allow_insecure_http"):
        Client(API_KEY, "http://api.example.com")


@pytest.mark.parametrize("kwargs", [{"max_concurrency": 0}, {"max_concurrency": -1}, {"rpm": 0}])
async def test_bad_limits_raise_configuration_error(relay, kwargs):
    """A pool of no places, or a zero rate, is a ConfigurationError (a GemimgError)."""
    with pytest.raises(ConfigurationError):
        Client(API_KEY, relay.url, **kwargs)


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_base_url_works_with_or_without_v1(relay, suffix):
    """The base URL reaches the endpoint written bare, with a slash, or with /v1."""
    async with Client(API_KEY, relay.url + suffix, clock=FakeClock()) as client:
        result = await client.generate("a lighthouse")
    assert len(result.images) == 1
    assert len(relay.requests) == 1


async def test_repr_shows_the_relay_not_the_key(relay):
    """repr(client) names the relay and the pool size, never the key."""
    async with Client(SECRET, relay.url, max_concurrency=3) as client:
        text = repr(client) + str(client)
    assert SECRET not in text
    assert "127.0.0.1" in text
    assert "3" in text


async def test_a_closed_client_refuses_to_send(relay):
    """After aclose, generate raises ClientClosedError and nothing reaches the relay."""
    client = Client(API_KEY, relay.url, clock=FakeClock())
    await client.aclose()
    with pytest.raises(ClientClosedError, match="closed"):
        await client.generate("a lighthouse")
    assert relay.requests == []


# --- README usage ------------------------------------------------------------------------------


async def test_readme_generate_and_save(relay, tmp_path):
    """The README's first example: generate at 16:9, then save the URL image to a folder."""
    async with gi.Client(api_key=API_KEY, base_url=relay.url, max_concurrency=8) as client:
        result = await client.generate("a lighthouse at dusk", size="16:9")
        paths = await result.save(str(tmp_path))
    assert len(paths) == 1
    assert paths[0].parent == tmp_path
    assert paths[0].name == f"{result.stem}_0.png"
    assert file_png_size(paths[0]) == (1024, 576)
    sent = relay.requests[-1]
    assert (sent.model, sent.prompt, sent.size) == (STANDARD, "a lighthouse at dusk", "16:9")


async def test_readme_generate_4k_from_a_local_image(relay, client, tmp_path):
    """generate_4k(..., images=[path]) sends the file as a PNG data URI to the 4K model."""
    source = tmp_path / "photo.png"
    source.write_bytes(tiny_png())
    result = await client.generate_4k(PROMPT_4K, size="21:9", images=[source])
    sent = relay.requests[-1]
    assert sent.model == TIER_4K
    assert sent.images == (f"data:image/png;base64,{base64.b64encode(tiny_png()).decode()}",)
    paths = await result.save(tmp_path / "out")
    assert file_png_size(paths[0]) == (4096, 1755)


async def test_readme_generate_2k_fuses_two_urls_as_b64(relay, client):
    """generate_2k(..., images=[url1, url2], response_format="b64_json") returns bytes."""
    urls = ["https://img.example.com/person.png", "https://img.example.com/clothes.jpg"]
    result = await client.generate_2k(
        "put the clothes of image 2 on the person of image 1",
        images=urls,
        response_format="b64_json",
    )
    sent = relay.requests[-1]
    assert sent.model == TIER_2K
    assert sent.images == tuple(urls)
    assert sent.response_format == "b64_json"
    [image] = result.images
    assert image.url is None
    assert image.data is not None
    assert png_size(image.data) == (2048, 2048)
    assert (image.media_type, image.width, image.height) == ("image/png", 2048, 2048)


async def test_readme_n_images_saved_as_they_arrive(relay, client, tmp_path):
    """generate("a fox", n=2, save_to=dir) leaves two files and fills result.paths."""
    result = await client.generate("a fox", n=2, save_to=tmp_path)
    assert result.paths == (tmp_path / f"{result.stem}_0.png", tmp_path / f"{result.stem}_1.png")
    for image, path in zip(result.images, result.paths, strict=True):
        assert path.is_file()
        assert image.path == path
        assert image.byte_size == path.stat().st_size
        assert (image.width, image.height) == file_png_size(path) == (1024, 1024)
    assert relay.requests[-1].n == 2
    assert no_temp_files(tmp_path)


# --- models and pixel sizes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "full_name", "size", "pixels"),
    [
        (Model.STANDARD, STANDARD, "16:9", (1024, 576)),
        ("standard", STANDARD, "1:1", (1024, 1024)),
        (Model.RES_2K, TIER_2K, "9:16", (1152, 2048)),
        ("2k", TIER_2K, "4:3", (2048, 1536)),
        (TIER_2K, TIER_2K, "2:3", (1365, 2048)),
        ("4k", TIER_4K, "21:9", (4096, 1755)),
        (Model.RES_4K, TIER_4K, "21:9", (4096, 1755)),
    ],
)
async def test_every_tier_gives_its_pixel_size(  # noqa: PLR0917 - pytest fills these by name
    relay, client, tmp_path, model, full_name, size, pixels
):
    """Each tier, named by member, alias or full name, gives a PNG whose long side fits it."""
    prompt = PROMPT_4K if full_name == TIER_4K else "a lighthouse"
    result = await client.generate(prompt, model=model, size=size, save_to=tmp_path)
    assert relay.requests[-1].model == full_name
    assert result.request.model == full_name
    assert pixels == pixel_size(full_name, size)
    assert file_png_size(result.paths[0]) == pixels
    assert (result.images[0].width, result.images[0].height) == pixels


@pytest.mark.parametrize(
    ("method", "full_name"),
    [("generate", STANDARD), ("generate_2k", TIER_2K), ("generate_4k", TIER_4K)],
)
async def test_tier_methods_pick_their_model(relay, client, method, full_name):
    """generate, generate_2k and generate_4k send the standard, 2K and 4K model."""
    await getattr(client, method)(PROMPT_4K, size="21:9")
    assert relay.requests[-1].model == full_name


async def test_unknown_full_model_name_passes_through(tmp_path):
    """A model name the client does not know is sent unchanged."""
    async with (
        FakeRelay(api_keys=API_KEY, extra_models="gemini-3-pro-image-preview-hd") as relay,
        once(relay.url) as client,
    ):
        result = await client.generate("a fox", model="gemini-3-pro-image-preview-hd")
    assert relay.requests[-1].model == "gemini-3-pro-image-preview-hd"
    assert result.request.model == "gemini-3-pro-image-preview-hd"


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
    assert path.stat().st_size > 20_000_000
    assert file_png_size(path) == (4096, 2304)
    assert png_pixels_intact(path)
    assert result.images[0].byte_size == path.stat().st_size


async def test_4k_gets_the_longer_read_timeout(relay, client):
    """generate_4k waits up to read_4k; the standard model gives up after read."""
    timeouts = Timeouts(read=0.1, read_4k=10.0)
    relay.script(Fault.delay(0.4), Fault.delay(0.4))
    result = await client.generate_4k(PROMPT_4K, size="21:9", timeouts=timeouts)
    assert len(result.images) == 1
    with pytest.raises(OutcomeUnknownError):
        await client.generate(PROMPT_4K, size="21:9", timeouts=timeouts)


# --- response formats and relay variants -------------------------------------------------------


async def test_url_format_returns_a_url_and_fetches_it_without_the_key(relay, client, tmp_path):
    """A url answer holds the image host's URL; saving fetches it with no Authorization."""
    result = await client.generate("a lighthouse")
    assert relay.requests[-1].response_format == "url"
    [image] = result.images
    assert image.url is not None
    assert image.url.startswith(f"{relay.url}/files/")
    assert image.data is None
    assert image.path is None
    assert relay.downloads == []
    [path] = await result.save(tmp_path)
    assert file_png_size(path) == (1024, 1024)
    assert len(relay.downloads) == 1
    assert relay.downloads[0].authorization is None


async def test_b64_format_returns_the_image_bytes(relay, client):
    """A b64_json answer holds the decoded PNG, typed and sized."""
    result = await client.generate("a lighthouse", size="3:2", response_format="b64_json")
    [image] = result.images
    assert image.data is not None
    assert png_size(image.data) == (1024, 683)
    assert (image.media_type, image.width, image.height) == ("image/png", 1024, 683)
    assert image.byte_size == len(image.data)
    assert relay.downloads == []


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
    assert file_png_size(path) == (819, 1024)
    assert path.read_bytes().endswith(b"IEND\xaeB`\x82")
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("quirk", QUIRKS)
async def test_every_relay_variant_gives_the_image_in_memory(relay, client, quirk):
    """Without save_to, every answer shape yields either a fetchable URL or the PNG bytes."""
    relay.script(Fault.quirk(quirk))
    result = await client.generate("a fox", response_format="b64_json")
    [image] = result.images
    assert image.data is not None
    assert png_size(image.data) == (1024, 1024)


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


async def test_fewer_images_than_asked_are_returned_as_they_are(relay, client, caplog):
    """n=3 answered with 1 image gives a result of 1 image and a warning."""
    relay.script(Fault.fewer_images(1))
    with caplog.at_level(logging.WARNING, logger="gemimg_async"):
        result = await client.generate("a fox", n=3)
    assert len(result.images) == 1
    assert "asked for 3 images" in caplog.text


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


# --- input images ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (tiny_png(), "image/png"),
        (tiny_jpeg(), "image/jpeg"),
        (tiny_webp(), "image/webp"),
        (tiny_gif(), "image/gif"),
    ],
    ids=bytes_id,
)
@pytest.mark.parametrize("kind", ["str path", "Path", "bytes"])
async def test_local_images_are_sent_as_typed_data_uris(  # noqa: PLR0917 - pytest fills these by name
    relay, client, tmp_path, data, media_type, kind
):
    """A file path or raw bytes become a data URI whose MIME type comes from the magic bytes."""
    file = tmp_path / "input.bin"  # a misleading name: the type must come from the bytes
    file.write_bytes(data)
    given = {"str path": str(file), "Path": file, "bytes": data}[kind]
    await client.generate("restyle this", images=given)
    encoded = base64.b64encode(data).decode()
    assert relay.requests[-1].images == (f"data:{media_type};base64,{encoded}",)


async def test_http_urls_are_sent_unchanged(relay, client):
    """http(s) URLs go to the relay exactly as given."""
    urls = ["https://example.com/a.png?sig=1&x=2", "http://example.com/b.webp"]
    await client.generate("merge these", images=urls)
    assert relay.requests[-1].images == tuple(urls)


async def test_data_uris_are_sent_unchanged(relay, client):
    """A well-formed data URI goes to the relay exactly as given."""
    uri = f"data:image/jpeg;base64,{base64.b64encode(tiny_jpeg()).decode()}"
    await client.generate("restyle this", images=[uri])
    assert relay.requests[-1].images == (uri,)


@pytest.mark.parametrize(
    ("label", "data", "media_type"),
    [
        ("", tiny_png(), "image/png"),
        ("image/jpeg", tiny_png(), "image/png"),
        ("image/png", tiny_jpeg(), "image/jpeg"),
        ("image/PNG", tiny_webp(), "image/webp"),
        ("IMAGE/PNG", tiny_png(), "image/png"),
    ],
    ids=bytes_id,
)
async def test_data_uri_is_sent_labelled_by_its_bytes(relay, client, label, data, media_type):
    """A data URI with no or the wrong MIME type reaches the relay labelled from its bytes."""
    encoded = base64.b64encode(data).decode()
    await client.generate("restyle this", images=[f"data:{label};base64,{encoded}"])
    assert relay.requests[-1].images == (f"data:{media_type};base64,{encoded}",)


async def test_every_input_kind_together_keeps_its_order(relay, client, tmp_path):
    """A mix of path, bytes, URL and data URI arrives in the order given, each encoded."""
    png, jpeg = tmp_path / "a.png", tiny_jpeg()
    png.write_bytes(tiny_png())
    uri = f"data:image/gif;base64,{base64.b64encode(tiny_gif()).decode()}"
    await client.generate("fuse", images=[png, jpeg, "https://example.com/c.png", uri])
    sent = relay.requests[-1].images
    assert [s.split(",")[0] if s.startswith("data:") else s for s in sent] == [
        "data:image/png;base64",
        "data:image/jpeg;base64",
        "https://example.com/c.png",
        "data:image/gif;base64",
    ]
    assert sent[3] == uri


async def test_fourteen_images_are_allowed(relay, client):
    """Exactly 14 input images is the model's limit, and it is sent."""
    urls = [f"https://example.com/{i}.png" for i in range(14)]
    await client.generate("fuse", images=urls)
    assert relay.requests[-1].images == tuple(urls)


# --- validation before anything is sent --------------------------------------------------------


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


@pytest.mark.parametrize("content", [b"just text\n", b"<html>not an image</html>", b""])
async def test_local_file_that_is_no_image_raises_before_sending(relay, client, tmp_path, content):
    """A local file that is not PNG/JPEG/WEBP/GIF raises InvalidImageError; nothing is sent."""
    file = tmp_path / "looks.png"
    file.write_bytes(content)
    with pytest.raises(InvalidImageError):
        await client.generate("restyle", images=[file])
    assert relay.requests == []


async def test_missing_local_file_raises_before_sending(relay, client, tmp_path):
    """A path that does not exist raises InvalidImageError naming it; nothing is sent."""
    with pytest.raises(InvalidImageError, match=r"nope\.png"):
        await client.generate("restyle", images=[tmp_path / "nope.png"])
    assert relay.requests == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
async def test_unreadable_local_file_raises_before_sending(relay, client, tmp_path):
    """A file that cannot be read raises InvalidImageError; nothing is sent."""
    file = tmp_path / "locked.png"
    file.write_bytes(tiny_png())
    file.chmod(0)
    with pytest.raises(InvalidImageError, match="locked"):
        await client.generate("restyle", images=[file])
    assert relay.requests == []


async def test_directory_as_image_raises_before_sending(relay, client, tmp_path):
    """A directory given as an image raises InvalidImageError; nothing is sent."""
    with pytest.raises(InvalidImageError):
        await client.generate("restyle", images=[tmp_path])
    assert relay.requests == []


async def test_one_bad_image_among_good_ones_sends_nothing(relay, client, tmp_path):
    """If any input fails to read, none of the request is sent."""
    good = tmp_path / "good.png"
    good.write_bytes(tiny_png())
    with pytest.raises(InvalidImageError):
        await client.generate("fuse", images=[good, "https://example.com/a.png", tmp_path / "x"])
    assert relay.requests == []


async def test_oversized_local_file_raises_before_sending(relay, client, tmp_path):
    """A local image over the 7 MB inline limit raises InvalidImageError; nothing is sent."""
    big = tmp_path / "big.png"
    big.write_bytes(tiny_png() + b"\x00" * (gi.MAX_INLINE_IMAGE_BYTES + 1))
    with pytest.raises(InvalidImageError, match="MB"):
        await client.generate("restyle", images=[big])
    assert relay.requests == []


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


async def test_no_size_sends_no_size(relay, client):
    """Without size= the request carries no size field."""
    await client.generate("a fox")
    assert relay.requests[-1].size is None


async def test_chinese_and_long_prompts_arrive_intact(relay, client):
    """A long Chinese prompt reaches the relay unchanged."""
    prompt = PROMPT_ZH * 300
    await client.generate(prompt)
    assert relay.requests[-1].prompt == prompt


# --- results -----------------------------------------------------------------------------------


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


async def test_each_generation_gets_its_own_idempotency_key(relay, client):
    """Two generations send two different Idempotency-Keys."""
    first = await client.generate("a fox")
    second = await client.generate("a fox")
    keys = [r.idempotency_key for r in relay.requests]
    assert keys == [first.idempotency_key, second.idempotency_key]
    assert keys[0] != keys[1]


async def test_url_result_has_no_pixel_size_until_saved(relay, client, tmp_path):
    """A url image's size is unknown in memory; save_to measures it from the bytes."""
    in_memory = await client.generate("a fox", size="9:16")
    assert in_memory.images[0].width is None
    on_disk = await client.generate("a fox", size="9:16", save_to=tmp_path)
    image = on_disk.images[0]
    assert (image.media_type, image.width, image.height) == ("image/png", 576, 1024)


async def test_send_takes_a_prepared_request(relay, client, tmp_path):
    """client.send(ImageRequest(...)) generates it; its id names the files."""
    request = ImageRequest("a fox", model="2k", size="1:1", id="poster-7")
    result = await client.send(request, save_to=tmp_path)
    assert result.paths == (tmp_path / "poster-7_0.png",)
    assert relay.requests[-1].model == TIER_2K


# --- saving ------------------------------------------------------------------------------------


async def test_save_names_files_stem_index_ext_not_the_server_name(relay, client, tmp_path):
    """save() writes {stem}_{i}.png, never the URL's file name."""
    result = await client.generate("a fox", n=2)
    server_names = {url.rsplit("/", 1)[-1] for url in (i.url for i in result.images) if url}
    paths = await result.save(tmp_path, stem="fox")
    assert [p.name for p in paths] == ["fox_0.png", "fox_1.png"]
    assert not server_names & {p.name for p in tmp_path.iterdir()}


async def test_save_takes_the_extension_from_the_bytes(client, tmp_path):
    """Image bytes that are a JPEG are saved as .jpg, whatever else is claimed."""
    result = GenerationResult(
        request=ImageRequest("a fox"),
        images=(GeneratedImage(0, data=tiny_jpeg(), media_type="image/png"),),
        created=None,
        idempotency_key="k",
        request_ids=(),
        attempts=1,
        timings=Timings(),
        stem="fox",
    )
    [path] = await result.save(tmp_path)
    assert path == tmp_path / "fox_0.jpg"
    assert path.read_bytes() == tiny_jpeg()


async def test_save_writes_b64_bytes_exactly(relay, client, tmp_path):
    """save() of a b64 result writes the decoded bytes as they are."""
    result = await client.generate("a fox", response_format="b64_json")
    [path] = await result.save(tmp_path)
    assert path.read_bytes() == result.images[0].data
    assert relay.downloads == []


async def test_save_never_overwrites(relay, client, tmp_path):
    """save() into a folder where the name exists raises FileExistsError and keeps the file."""
    result = await client.generate("a fox", response_format="b64_json")
    existing = tmp_path / f"{result.stem}_0.png"
    existing.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        await result.save(tmp_path)
    assert existing.read_bytes() == b"precious"
    assert no_temp_files(tmp_path)


async def test_save_twice_raises_the_second_time(relay, client, tmp_path):
    """Saving the same result twice to one folder raises FileExistsError the second time."""
    result = await client.generate("a fox")
    [first] = await result.save(tmp_path)
    before = first.read_bytes()
    with pytest.raises(FileExistsError):
        await result.save(tmp_path)
    assert first.read_bytes() == before
    assert no_temp_files(tmp_path)


async def test_save_overwrites_when_asked(relay, client, tmp_path):
    """save(overwrite=True) replaces an existing file with the image."""
    result = await client.generate("a fox", response_format="b64_json")
    existing = tmp_path / f"{result.stem}_0.png"
    existing.write_bytes(b"old")
    [path] = await result.save(tmp_path, overwrite=True)
    assert path == existing
    assert path.read_bytes() == result.images[0].data


async def test_save_to_never_overwrites(relay, client, tmp_path):
    """send(save_to=...) with a file of that name already there raises FileExistsError."""
    request = ImageRequest("a fox", id="cover")
    await client.send(request, save_to=tmp_path)
    first = (tmp_path / "cover_0.png").read_bytes()
    with pytest.raises(FileExistsError):
        await client.send(request, save_to=tmp_path)
    assert (tmp_path / "cover_0.png").read_bytes() == first
    assert no_temp_files(tmp_path)
    await client.send(request, save_to=tmp_path, overwrite=True)


async def test_save_to_creates_the_folder(relay, client, tmp_path):
    """save_to= a folder that does not exist yet creates it."""
    folder = tmp_path / "a" / "b"
    result = await client.generate("a fox", save_to=folder)
    assert result.paths[0].parent == folder


async def test_save_copies_files_already_saved(relay, client, tmp_path):
    """save() of a result already on disk writes a copy into the new folder."""
    result = await client.generate("a fox", save_to=tmp_path / "first")
    [copy] = await result.save(tmp_path / "second")
    assert copy == tmp_path / "second" / f"{result.stem}_0.png"
    assert copy.read_bytes() == result.paths[0].read_bytes()
    assert len(relay.downloads) == 1


async def test_save_works_after_the_client_is_closed(relay, tmp_path):
    """A url result can still be saved after its client is closed."""
    async with Client(API_KEY, relay.url, clock=FakeClock()) as client:
        result = await client.generate("a fox")
    [path] = await result.save(tmp_path)
    assert file_png_size(path) == (1024, 1024)


async def test_save_of_an_expired_url_raises_image_expired(relay, client, tmp_path):
    """Saving a URL the host no longer serves raises ImageExpiredError with the status."""
    result = await client.generate("a fox")
    relay.expire_files()
    with pytest.raises(ImageExpiredError) as caught:
        await result.save(tmp_path)
    assert caught.value.status == 410
    assert caught.value.url == result.images[0].url
    assert isinstance(caught.value, DownloadError)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("fault", "status"),
    [(Fault.status(500), 500), (Fault.html(), 200), (Fault.truncate(0.5), None)],
)
async def test_failed_download_raises_download_error(relay, tmp_path, fault, status):
    """A download that fails, serves HTML or is cut short raises DownloadError; no file is left."""
    async with once(relay.url) as client:
        relay.script_download(fault)
        with pytest.raises(DownloadError) as caught:
            await client.generate("a fox", save_to=tmp_path)
    assert caught.value.status == status
    assert caught.value.url.startswith(f"{relay.url}/files/")
    assert caught.value.request_id == relay.requests[-1].request_id
    assert caught.value.idempotency_key == relay.requests[-1].idempotency_key
    assert list(tmp_path.iterdir()) == []


# --- errors ------------------------------------------------------------------------------------


async def test_wrong_key_raises_authentication_error(relay):
    """A 401 raises AuthenticationError carrying the relay's message, code and request id."""
    async with once(relay.url, key="sk-wrong") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.generate("a fox")
    error = caught.value
    assert error.status == 401
    assert error.message == "Incorrect API key provided."
    assert error.code == "invalid_api_key"
    assert error.request_id == relay.requests[-1].request_id
    assert error.request_ids == (relay.requests[-1].request_id,)
    assert error.idempotency_key == relay.requests[-1].idempotency_key
    assert len(relay.requests) == 1


@pytest.mark.parametrize(
    ("fault", "error_class", "status", "code"),
    [
        (
            Fault.status(403, message="Forbidden group", code_field="forbidden"),
            AuthenticationError,
            403,
            "forbidden",
        ),
        (
            Fault.status(400, message="Invalid size", code_field="invalid_size"),
            BadRequestError,
            400,
            "invalid_size",
        ),
        (Fault.status(404, message="No such model", code_field=404), BadRequestError, 404, 404),
        (
            Fault.status(
                400,
                message="Your request was blocked by the safety system",
                code_field="content_policy_violation",
            ),
            ContentPolicyError,
            400,
            "content_policy_violation",
        ),
        (
            Fault.status(400, message=BLOCKED_ZH, code_field=1301),
            ContentPolicyError,
            400,
            1301,
        ),
        (Fault.rate_limited("7"), RateLimitError, 429, "rate_limit_exceeded"),
        (Fault.server_error(500), ServerError, 500, "server_error"),
        (Fault.server_error(502), ServerError, 502, "server_error"),
        (Fault.server_error(503), ServerError, 503, "server_error"),
        (Fault.server_error(504), ServerError, 504, "server_error"),
        (
            Fault.status(500, message=OVERLOADED_ZH, code_field="upstream_error"),
            ServerError,
            500,
            "upstream_error",
        ),
    ],
)
async def test_error_statuses_raise_their_class(relay, fault, error_class, status, code):
    """Each error status raises its class, carrying status, message, code and request id."""
    relay.script(fault)
    async with once(relay.url) as client:
        with pytest.raises(error_class) as caught:
            await client.generate("a fox")
    error = caught.value
    assert type(error) is error_class
    assert isinstance(error, APIError)
    assert isinstance(error, GemimgError)
    assert error.status == status
    assert error.message == fault.message
    assert error.code == code
    assert error.request_id == relay.requests[-1].request_id
    assert error.request_id in str(error)
    assert f"HTTP {status}" in str(error)
    assert len(relay.requests) == 1


async def test_rate_limit_carries_retry_after(relay):
    """A 429 with Retry-After raises RateLimitError whose retry_after is that wait."""
    relay.script(Fault.rate_limited("7"))
    async with once(relay.url) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.generate("a fox")
    assert caught.value.retry_after == 7.0
    assert "retry after 7 s" in str(caught.value)


async def test_rate_limit_without_retry_after_has_none(relay):
    """A 429 without Retry-After raises RateLimitError with retry_after None."""
    relay.script(Fault.rate_limited())
    async with once(relay.url) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.generate("a fox")
    assert caught.value.retry_after is None


async def test_rate_limits_that_persist_raise_after_instant_retries(relay, client, clock):
    """With the default policy and a fake clock, persistent 429s end in RateLimitError."""
    relay.script(*[Fault.rate_limited("3")] * 10)
    with pytest.raises(RateLimitError) as caught:
        await client.generate("a fox")
    assert len(clock.sleeps) == len(relay.requests) - 1 > 0
    assert caught.value.attempts == len(relay.requests)
    assert caught.value.request_ids == tuple(r.request_id for r in relay.requests)
    assert caught.value.request_id == relay.requests[-1].request_id


async def test_html_error_page_gives_a_readable_message(relay):
    """An nginx 502 HTML page raises ServerError with the page's text, not its tags."""
    relay.script(Fault.status(502, html=True))
    async with once(relay.url) as client:
        with pytest.raises(ServerError) as caught:
            await client.generate("a fox")
    assert "502 Bad Gateway" in caught.value.message
    assert "<" not in caught.value.message
    assert caught.value.code is None


async def test_unknown_model_on_the_relay_raises_bad_request(relay, client):
    """A model the relay does not serve comes back as BadRequestError with its message."""
    with pytest.raises(BadRequestError) as caught:
        await client.generate("a fox", model="gemini-9-ultra")
    assert caught.value.status == 400
    assert "gemini-9-ultra" in caught.value.message
    assert caught.value.code == "invalid_model"
    assert relay.requests[-1].model == "gemini-9-ultra"


async def test_closed_port_raises_connect_error(relay):
    """Nothing listening raises ConnectError: a TransportError, chained from aiohttp's."""
    async with once(f"http://127.0.0.1:{closed_port()}") as client:
        with pytest.raises(ConnectError) as caught:
            await client.generate("a fox")
    error = caught.value
    assert isinstance(error, TransportError)
    assert error.__cause__ is not None
    assert error.idempotency_key is not None
    assert error.request_id is None


async def test_closed_port_with_default_retries_still_raises_connect_error(clock):
    """The default policy retries a refused connection with instant sleeps, then raises."""
    async with Client(API_KEY, f"http://127.0.0.1:{closed_port()}", clock=clock) as client:
        with pytest.raises(ConnectError) as caught:
            await client.generate("a fox")
    assert caught.value.attempts == RetryPolicy().not_sent_attempts


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
@pytest.mark.parametrize("fault", [Fault.reset(), Fault.truncate(0.5), Fault.truncate(0.0)])
async def test_lost_answer_raises_outcome_unknown_and_is_not_resent(
    relay, client, fault, response_format
):
    """A reset after the body, or a truncated answer, raises OutcomeUnknownError, sent once."""
    relay.script(fault)
    with pytest.raises(OutcomeUnknownError) as caught:
        await client.generate("a fox", response_format=response_format)
    assert isinstance(caught.value, TransportError)
    assert caught.value.__cause__ is not None
    assert len(relay.requests) == 1
    assert caught.value.idempotency_key == relay.requests[-1].idempotency_key


async def test_read_timeout_raises_outcome_unknown(relay):
    """No answer within the client's read timeout raises OutcomeUnknownError."""
    relay.script(Fault.delay(1.0))
    async with once(relay.url, timeouts=Timeouts(read=0.1)) as client:
        with pytest.raises(OutcomeUnknownError, match="read timeout"):
            await client.generate("a fox")
    assert len(relay.requests) == 1


async def test_per_call_timeouts_override_the_client(relay):
    """generate(timeouts=...) applies that read timeout to this call."""
    relay.script(Fault.delay(1.0))
    async with once(relay.url) as client:
        with pytest.raises(OutcomeUnknownError, match="read timeout"):
            await client.generate("a fox", timeouts=Timeouts(read=0.1))
    assert len(relay.requests) == 1


async def test_truncated_b64_answer_leaves_no_file(relay, client, tmp_path):
    """A b64 answer cut short with save_to leaves neither a partial image nor a temp file."""
    relay.script(Fault.truncate(0.6))
    with pytest.raises(OutcomeUnknownError):
        await client.generate("a fox", response_format="b64_json", save_to=tmp_path)
    assert list(tmp_path.iterdir()) == []


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


def test_the_error_tree_is_rooted_at_gemimg_error():
    """Every error class the package exports derives from GemimgError, as documented."""
    tree = {
        ClientClosedError: GemimgError,
        ConfigurationError: GemimgError,
        ValidationError: GemimgError,
        InvalidModelError: ValidationError,
        InvalidPromptError: ValidationError,
        InvalidCountError: ValidationError,
        InvalidSizeError: ValidationError,
        InvalidResponseFormatError: ValidationError,
        InvalidImageError: ValidationError,
        TooManyImagesError: InvalidImageError,
        APIError: GemimgError,
        AuthenticationError: APIError,
        BadRequestError: APIError,
        ContentPolicyError: BadRequestError,
        RateLimitError: APIError,
        ServerError: APIError,
        RefusalError: APIError,
        MalformedResponseError: APIError,
        TransportError: GemimgError,
        ConnectError: TransportError,
        OutcomeUnknownError: TransportError,
        DownloadError: GemimgError,
        ImageExpiredError: DownloadError,
    }
    for cls, parent in tree.items():
        assert cls.__bases__[0] is parent, cls
    exported = {
        obj
        for name in gi.__all__
        if isinstance(obj := getattr(gi, name), type) and issubclass(obj, BaseException)
    }
    assert exported == {*tree, GemimgError}


# --- the key never leaks -----------------------------------------------------------------------


@pytest.fixture
async def secret_relay():
    async with FakeRelay(api_keys=SECRET) as relay:
        yield relay


def assert_no_secret(client, *objects):
    for obj in (client, *objects):
        assert SECRET not in str(obj)
        assert SECRET not in repr(obj)


async def test_key_is_sent_as_bearer_and_kept_out_of_results(secret_relay, tmp_path, caplog):
    """The key authorises the request but never shows in the client, request, result or logs."""
    caplog.set_level(logging.DEBUG)
    async with Client(SECRET, secret_relay.url, clock=FakeClock()) as client:
        result = await client.generate("a fox", n=2, size="1:1")
        paths = await result.save(tmp_path)
        b64 = await client.generate("a fox", response_format="b64_json", save_to=tmp_path / "b")
        assert_no_secret(client, result, b64, result.request, *result.images, client.stats)
    assert all(r.authorized for r in secret_relay.requests)
    assert all(d.authorization is None for d in secret_relay.downloads)
    assert all(SECRET not in str(d.headers) for d in secret_relay.downloads)
    assert len(paths) == 2
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    "fault",
    [
        Fault.rate_limited("1"),
        Fault.server_error(502),
        Fault.status(400, message="bad"),
        Fault.status(502, html=True),
        Fault.error_body("nope"),
        Fault.refusal(),
        Fault.html(),
        Fault.reset(),
        Fault.truncate(0.3),
    ],
)
async def test_key_never_in_errors(secret_relay, fault, caplog):
    """No error, nor anything chained to it, nor the log, shows the key."""
    caplog.set_level(logging.DEBUG)
    secret_relay.script(fault)
    async with once(secret_relay.url, key=SECRET) as client:
        with pytest.raises(GemimgError) as caught:
            await client.generate("a fox", response_format="b64_json")
    for text in texts_of(caught.value):
        assert SECRET not in text
    assert SECRET not in str(vars(caught.value))
    assert SECRET not in caplog.text


async def test_key_never_in_authentication_errors(secret_relay, caplog):
    """A rejected key does not appear in the AuthenticationError that reports it."""
    caplog.set_level(logging.DEBUG)
    wrong = SECRET[:-1] + "X"
    async with once(secret_relay.url, key=wrong) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.generate("a fox")
    for text in texts_of(caught.value):
        assert wrong not in text
    assert wrong not in caplog.text


async def test_key_never_in_transport_errors(caplog):
    """A connect failure does not show the key."""
    caplog.set_level(logging.DEBUG)
    async with Client(SECRET, f"http://127.0.0.1:{closed_port()}", clock=FakeClock()) as client:
        with pytest.raises(ConnectError) as caught:
            await client.generate("a fox")
    for text in texts_of(caught.value):
        assert SECRET not in text
    assert SECRET not in caplog.text


async def test_key_never_in_download_errors(secret_relay, tmp_path):
    """A failed image download does not show the key."""
    async with once(secret_relay.url, key=SECRET) as client:
        secret_relay.script_download(Fault.status(503))
        with pytest.raises(DownloadError) as caught:
            await client.generate("a fox", save_to=tmp_path)
    for text in texts_of(caught.value):
        assert SECRET not in text


async def test_key_never_in_map_outcomes(secret_relay):
    """map() outcomes, failed or not, and their JSON summaries do not show the key."""
    secret_relay.script(Fault.status(400, message="bad"), Fault.reset())
    requests = [ImageRequest("a fox", id=f"r{i}") for i in range(3)]
    async with once(secret_relay.url, key=SECRET, max_concurrency=1) as client:
        outcomes = [outcome async for outcome in client.map(requests, ordered=True)]
    assert [outcome.ok for outcome in outcomes] == [False, False, True]
    for outcome in outcomes:
        assert SECRET not in repr(outcome)
        assert SECRET not in str(outcome.to_json())
        if outcome.error is not None:
            assert all(SECRET not in text for text in texts_of(outcome.error))


# --- the pool ----------------------------------------------------------------------------------


async def test_max_concurrency_caps_requests_in_flight_across_calls():
    """50 generations started at once with max_concurrency=8 keep exactly 8 in flight at most."""
    results: list[GenerationResult] = []
    async with (
        FakeRelay(api_keys=API_KEY, latency=0.15) as relay,
        Client(API_KEY, relay.url, max_concurrency=8, clock=FakeClock()) as client,
    ):

        async def one(i: int) -> None:
            if i % 3 == 0:
                results.append(await client.generate_2k("a fox"))
            elif i % 3 == 1:
                results.append(await client.generate("a fox"))
            else:
                results.append(await client.send(ImageRequest("a fox", id=f"r{i}")))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
        stats = client.stats
    assert len(results) == 50
    assert len(relay.requests) == 50
    assert relay.max_in_flight == 8
    assert stats.in_flight == 0
    assert stats.pool_waits > 0


async def test_max_concurrency_is_shared_by_map_and_generate():
    """map() and generate() running together share one pool of max_concurrency places."""
    outcomes = []
    async with (
        FakeRelay(api_keys=API_KEY, latency=0.15) as relay,
        Client(API_KEY, relay.url, max_concurrency=6, clock=FakeClock()) as client,
    ):

        async def mapped() -> None:
            requests = [ImageRequest("a fox", id=f"m{i}") for i in range(15)]
            outcomes.extend([outcome async for outcome in client.map(requests)])

        async with anyio.create_task_group() as tg:
            tg.start_soon(mapped)
            for _ in range(15):
                tg.start_soon(client.generate, "a fox")
    assert len(outcomes) == 15
    assert all(outcome.ok for outcome in outcomes)
    assert len(relay.requests) == 30
    assert relay.max_in_flight == 6


async def test_max_concurrency_one_serialises():
    """max_concurrency=1 sends one generation at a time."""
    async with (
        FakeRelay(api_keys=API_KEY, latency=0.02) as relay,
        Client(API_KEY, relay.url, max_concurrency=1, clock=FakeClock()) as client,
        anyio.create_task_group() as tg,
    ):
        for _ in range(5):
            tg.start_soon(client.generate, "a fox")
    assert len(relay.requests) == 5
    assert relay.max_in_flight == 1


# --- found in review: closing a client that is in use ------------------------------------------


async def test_closing_the_client_under_a_running_map_raises(relay):
    """A map still iterating when its client is closed raises ClientClosedError instead of
    ending as if every request had been made."""
    relay.latency = 0.2
    try:
        client = Client(API_KEY, relay.url, clock=FakeClock(), max_concurrency=2)
        requests = (gi.ImageRequest(f"fox {i}") for i in range(10))
        seen = []

        async def consume() -> None:
            async for outcome in client.map(requests):
                seen.append(outcome)
                await client.aclose()

        with pytest.raises(ClientClosedError):
            await consume()
        assert len(seen) == 1
    finally:
        relay.latency = 0.0


async def test_an_idle_map_holds_no_place_in_the_pool(relay):
    """A map waiting on a slow source holds no place: generate() beside it goes straight out."""
    async with Client(API_KEY, relay.url, clock=FakeClock(), max_concurrency=2) as client:
        go = anyio.Event()

        async def slow_source():
            await go.wait()
            yield gi.ImageRequest("at last")

        async def drain():
            async for _ in client.map(slow_source()):
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            await anyio.sleep(0.05)
            assert client.stats.in_flight == 0
            with anyio.fail_after(5):
                await client.generate("not kept waiting")
            go.set()
    assert [r.prompt for r in relay.requests] == ["not kept waiting", "at last"]


async def test_map_under_rpm_spends_no_rate_on_an_empty_source(relay):
    """Two requests mapped at rpm=60 wait for one start, not one per idle worker."""
    clock = FakeClock()
    async with Client(API_KEY, relay.url, clock=clock, rpm=60) as client:
        requests = [gi.ImageRequest("one"), gi.ImageRequest("two")]
        outcomes = [outcome async for outcome in client.map(requests)]
        assert all(outcome.ok for outcome in outcomes)
        assert client.stats.rate_waits == 1
    assert sum(clock.sleeps) == pytest.approx(1.0)
