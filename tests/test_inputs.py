"""Input images made ready to send (`_inputs`): files read and inlined, URLs and data: URIs as
given, and every bad input refused before anything is sent; end to end against the fake relay.
"""

import base64
import os

import pytest

import gemimg_async as gi
from gemimg_async import ImageRequest, InvalidImageError
from gemimg_async._inputs import check_files, encode_images
from gemimg_async.testing import png
from helpers import bytes_id, gif, jpeg, uri, webp_lossless

pytestmark = pytest.mark.anyio


# --- what is sent ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (png(), "image/png"),
        (jpeg(), "image/jpeg"),
        (webp_lossless(), "image/webp"),
        (gif(), "image/gif"),
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
    uri = f"data:image/jpeg;base64,{base64.b64encode(jpeg()).decode()}"
    await client.generate("restyle this", images=[uri])
    assert relay.requests[-1].images == (uri,)


@pytest.mark.parametrize(
    ("label", "data", "media_type"),
    [
        ("", png(), "image/png"),
        ("image/jpeg", png(), "image/png"),
        ("image/png", jpeg(), "image/jpeg"),
        ("image/PNG", webp_lossless(), "image/webp"),
        ("IMAGE/PNG", png(), "image/png"),
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
    png_file, jpeg_bytes = tmp_path / "a.png", jpeg()
    png_file.write_bytes(png())
    uri = f"data:image/gif;base64,{base64.b64encode(gif()).decode()}"
    await client.generate("fuse", images=[png_file, jpeg_bytes, "https://example.com/c.png", uri])
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


# --- refused before sending --------------------------------------------------------------------


@pytest.mark.anyio
async def test_data_uri_with_bad_base64_after_the_head_raises():
    """A data URI whose base64 breaks after its head fails when made ready to send, off the loop."""
    encoded = base64.b64encode(png(40, 40)).decode()
    broken = f"data:image/png;base64,{encoded[:120]}!!!!{encoded[120:]}"
    request = ImageRequest("a fox", images=[broken])
    with pytest.raises(InvalidImageError, match="base64"):
        await encode_images(request.images)


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
    file.write_bytes(png())
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
    good.write_bytes(png())
    with pytest.raises(InvalidImageError):
        await client.generate("fuse", images=[good, "https://example.com/a.png", tmp_path / "x"])
    assert relay.requests == []


async def test_oversized_local_file_raises_before_sending(relay, client, tmp_path):
    """A local image over the 7 MB inline limit raises InvalidImageError; nothing is sent."""
    big = tmp_path / "big.png"
    big.write_bytes(png() + b"\x00" * (gi.MAX_INLINE_IMAGE_BYTES + 1))
    with pytest.raises(InvalidImageError, match="MB"):
        await client.generate("restyle", images=[big])
    assert relay.requests == []


# --- checked without sending (a dry run) -------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: folder / "missing.png", "does not exist"),
        (lambda folder: folder, "is not a file"),
        (lambda folder: _write(folder / "notes.png", b"just text\n"), "is not a PNG"),
        (lambda folder: _write(folder / "huge.png", png() + bytes(8 * 1024 * 1024)), "MB"),
    ],
    ids=["missing", "a-folder", "no-image", "too-big"],
)
def test_check_files_finds_what_sending_would_refuse(tmp_path, make, message):
    """check_files names the local input image a send would refuse, reading only its head; a
    good file, a URL and a data: URI pass."""
    bad = make(tmp_path)
    with pytest.raises(InvalidImageError, match=message):
        check_files(ImageRequest("restyle", images=[str(bad)]))
    good = _write(tmp_path / "good.png", png())
    check_files(ImageRequest("a", images=[str(good), "https://e.com/a.png", uri(png())]))


def _write(path, data):
    path.write_bytes(data)
    return path
