"""Image types and pixel sizes from magic bytes and headers (`_media`)."""

from pathlib import Path

import pytest

from gemimg_async._media import MediaInfo, is_image, sniff
from gemimg_async.testing import png
from helpers import PNG_SIGNATURE, bytes_id, gif, jpeg, webp_extended, webp_lossless, webp_lossy


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (png(3, 2), MediaInfo("image/png", "png", 3, 2)),
        (png(4096, 1755)[:24], MediaInfo("image/png", "png", 4096, 1755)),
        (jpeg(640, 480), MediaInfo("image/jpeg", "jpg", 640, 480)),
        (jpeg(33, 17, sof=0xC2), MediaInfo("image/jpeg", "jpg", 33, 17)),
        (jpeg(33, 17, fill=True), MediaInfo("image/jpeg", "jpg", 33, 17)),
        (gif(320, 200), MediaInfo("image/gif", "gif", 320, 200)),
        (gif(1, 65535, b"87a"), MediaInfo("image/gif", "gif", 1, 65535)),
        (webp_lossless(16383, 1), MediaInfo("image/webp", "webp", 16383, 1)),
        (webp_lossy(1024, 576), MediaInfo("image/webp", "webp", 1024, 576)),
        (webp_extended(4096, 2304), MediaInfo("image/webp", "webp", 4096, 2304)),
    ],
    ids=bytes_id,
)
def test_sniff_reads_type_and_pixel_size(head, expected):
    """sniff() tells the type from magic bytes and reads the pixel size from the header."""
    assert sniff(head) == expected


@pytest.mark.parametrize(
    ("head", "media_type", "extension"),
    [
        (PNG_SIGNATURE, "image/png", "png"),
        (png()[:20], "image/png", "png"),
        (b"\xff\xd8\xff", "image/jpeg", "jpg"),
        (jpeg()[:10], "image/jpeg", "jpg"),
        (b"GIF89a", "image/gif", "gif"),
        (b"RIFF\x00\x00\x00\x00WEBP", "image/webp", "webp"),
    ],
    ids=bytes_id,
)
def test_sniff_of_a_short_head_knows_the_type_not_the_size(head, media_type, extension):
    """A head too short for the size still gives the type, with no size."""
    assert sniff(head) == MediaInfo(media_type, extension, None, None)


def test_sniff_jpeg_with_sof_beyond_the_head_has_no_size():
    """A JPEG whose frame header lies past the head gives no size, not a wrong one."""
    data = b"\xff\xd8\xff\xe1\xff\xf0" + bytes(200)
    assert sniff(data) == MediaInfo("image/jpeg", "jpg", None, None)


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"\x89PNG",
        b"\x89PNX\r\n\x1a\n" + bytes(20),
        b"GIF90a" + bytes(10),
        b"RIFF\x00\x00\x00\x00WAVEfmt ",
        b"<!DOCTYPE html><html>",
        b'{"error": "not found"}',
        b"BM" + bytes(60),
        b"\x00\x00\x00\x18ftypavif",
        b" \x89PNG\r\n\x1a\n",
    ],
)
def test_sniff_of_what_is_no_supported_image_is_none(head):
    """Anything but PNG, JPEG, GIF or WEBP magic gives None."""
    assert sniff(head) is None


@pytest.mark.parametrize(
    "head",
    [
        png()[:20],
        jpeg()[:10],
        gif(320, 200),
        webp_lossy(1024, 576),
        b"RIFF\x00\x00\x00\x00WEBP",
        b"",
        b"\x89PNG",
        b"GIF90a" + bytes(10),
        b"RIFF\x00\x00\x00\x00WAVEfmt ",
        b"<!DOCTYPE html><html>",
        b" \x89PNG\r\n\x1a\n",
    ],
    ids=bytes_id,
)
def test_is_image_says_what_sniff_says(head):
    """is_image() (the check on every image's first bytes) agrees with sniff() finding a type."""
    assert is_image(head) is (sniff(head) is not None)


def test_sniff_reads_the_relay_png_it_is_given(tmp_path):
    """A PNG written to disk and read back sniffs to the same type and size."""
    path = Path(tmp_path, "x.png")
    path.write_bytes(png(9, 5))
    with path.open("rb") as file:
        assert sniff(file.read(64)) == MediaInfo("image/png", "png", 9, 5)
    assert path.stat().st_size == len(png(9, 5))
