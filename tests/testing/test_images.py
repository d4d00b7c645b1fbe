"""The fake relay's images (`testing._images`): real PNGs sized like the tiers, told apart by
prompt and index, and cached within a byte budget.
"""

import base64
import zlib

import pytest

from gemimg_async import PIXELS_1K
from gemimg_async.testing import MODELS, RATIOS, FakeRelay, _images, pixel_size
from helpers import STANDARD, TIER_2K, TIER_4K, fetch, generate, png_chunks, png_size

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        (STANDARD, None, (1024, 1024)),
        (STANDARD, "16:9", (1376, 768)),
        (STANDARD, "9:16", (768, 1376)),
        (STANDARD, "3:2", (1264, 848)),
        (STANDARD, "4:5", (928, 1152)),
        (STANDARD, "21:9", (1584, 672)),
        ("my-model", "4:3", (1200, 896)),
        (TIER_2K, "1:1", (2048, 2048)),
        (TIER_2K, "3:4", (1792, 2400)),
        (TIER_4K, "16:9", (5504, 3072)),
        (TIER_4K, "1:1", (4096, 4096)),
        (STANDARD, "2752x1536", (2752, 1536)),
    ],
)
async def test_pixel_size_follows_tier_and_ratio(relay, session, model, size, expected):
    """The PNG's IHDR has Google's pixel size for the tier and ratio (or the pixel size sent)."""
    answer = await generate(session, relay, model=model, size=size, response_format="b64_json")
    assert png_size(base64.b64decode(answer["data"][0]["b64_json"])) == expected


def test_pixel_size_helper():
    """pixel_size() gives Google's table (2K and 4K are x2 and x4) and rejects unknown ratios."""
    assert pixel_size(STANDARD) == (1024, 1024)
    assert pixel_size(TIER_4K, "9x16") == (3072, 5504)
    assert MODELS[TIER_2K] == "2K"
    for ratio in RATIOS:
        width, height = PIXELS_1K[ratio]
        assert pixel_size(TIER_2K, ratio) == (2 * width, 2 * height)
        assert pixel_size(TIER_4K, ratio) == (4 * width, 4 * height)
    with pytest.raises(ValueError):
        pixel_size(STANDARD, "2:1")


async def test_png_is_well_formed(relay, session):
    """The PNG has valid CRCs, one IHDR/IDAT/IEND, and rows of filter 0 RGB."""
    answer = await generate(session, relay, size="16:9", response_format="b64_json")
    data = base64.b64decode(answer["data"][0]["b64_json"])
    chunks = png_chunks(data)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    raw = zlib.decompress(chunks[1][1])
    width, height = png_size(data)
    row = width * 3 + 1
    assert len(raw) == height * row
    assert all(raw[y * row] == 0 for y in range(height))
    assert len(data) < 100_000  # a gradient compresses well


async def test_different_prompts_give_different_images(relay, session):
    """Different prompts get different colours; one prompt always the same image."""

    async def image(prompt):
        answer = await generate(session, relay, prompt=prompt, response_format="b64_json")
        return answer["data"][0]["b64_json"]

    assert await image("a cat") == await image("a cat")
    assert len({await image(p) for p in ("a cat", "a dog", "a ship", "a tree")}) >= 3


async def test_n_images_are_distinct(relay, session):
    """n=3 answers three different images at three different URLs."""
    answer = await generate(session, relay, n=3)
    urls = [item["url"] for item in answer["data"]]
    assert len(set(urls)) == 3
    images = {(await fetch(session, url))[2] for url in urls}
    assert len(images) == 3


async def test_noise_4k_is_big_and_incompressible(session):
    """The noise style makes a 4K 16:9 PNG of about 51 MB, served whole as url and b64_json."""
    async with FakeRelay(image_style="noise") as relay:
        answer = await generate(
            session, relay, model=TIER_4K, size="16:9", response_format="b64_json"
        )
        data = base64.b64decode(answer["data"][0]["b64_json"])
        assert png_size(data) == (5504, 3072)
        assert 50_000_000 < len(data) < 51_000_000
        answer = await generate(session, relay, model=TIER_4K, size="16:9")
        status, _, served = await fetch(session, answer["data"][0]["url"])
        assert status == 200
        assert served == data


def test_image_cache_is_bounded_by_bytes():
    """The image cache evicts least recently used entries beyond its byte budget."""
    cache = _images._ImageCache(max_bytes=1000)
    keys = [_images.ImageKey(i, 1, "gradient", 0) for i in range(4)]
    for key in keys:
        cache.put(key, _images.Rendered(bytes(200)))
    assert cache.get(keys[0]) is None
    assert all(cache.get(key) is not None for key in keys[2:])
