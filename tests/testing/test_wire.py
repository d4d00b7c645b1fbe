"""The fake relay's side of the wire (`testing._wire`): requests checked as a relay checks them,
and the answer items it writes; over plain aiohttp.
"""

import base64

import pytest

from helpers import SIXTEEN_BYTES, STANDARD, body, error_of, generate, png_size, post

pytestmark = pytest.mark.anyio


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not json", "invalid_json"),
        ([1, 2], "invalid_json"),
        ({"prompt": "x"}, "missing_model"),
        (body(model="dall-e-3"), "invalid_model"),
        (body(model=3), "invalid_model"),
        ({"model": STANDARD}, "missing_prompt"),
        (body(prompt=""), "invalid_prompt"),
        (body(prompt="   "), "invalid_prompt"),
        (body(prompt=["x"]), "invalid_prompt"),
        (body(size="7:3"), "invalid_size"),
        (body(size="1000x1000"), "invalid_size"),
        (body(size=169), "invalid_size"),
        (body(response_format="png"), "invalid_response_format"),
        (body(n=0), "invalid_n"),
        (body(n=5), "invalid_n"),
        (body(n="2"), "invalid_n"),
        (body(n=True), "invalid_n"),
        (body(n=1.5), "invalid_n"),
        (body(image=42), "invalid_image"),
        (body(image=[42]), "invalid_image"),
        (body(image="ftp://example.com/a.png"), "invalid_image"),
        (body(image="https://"), "invalid_image"),
        (body(image="example.com/a.png"), "invalid_image"),
        (body(image=f"data:image/bmp;base64,{SIXTEEN_BYTES}"), "invalid_image"),
        (body(image=f"data:image/png,{SIXTEEN_BYTES}"), "invalid_image"),
        (body(image="data:image/png;base64,@@@@"), "invalid_image"),
        (body(image="data:image/png;base64,"), "invalid_image"),
        (body(image=["https://example.com/a.png"] * 15), "too_many_images"),
    ],
)
async def test_invalid_request_is_400(relay, session, payload, code):
    """Each kind of invalid body answers 400 with its own error code."""
    status, headers, raw = await post(session, relay, payload)
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    error = error_of(raw)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["message"]
    assert relay.requests[0].status == 400


async def test_inline_image_over_7mb_is_400(relay, session):
    """An inline image over 7 MB answers 400 image_too_large."""
    big = base64.b64encode(bytes(7 * 1024 * 1024 + 1)).decode()
    status, _, raw = await post(session, relay, body(image=f"data:image/png;base64,{big}"))
    assert status == 400
    assert error_of(raw)["code"] == "image_too_large"


@pytest.mark.parametrize(
    "fields",
    [
        {"size": "16x9"},
        {"size": "16:9"},
        {"size": None, "n": None, "response_format": None, "image": None},
        {"n": 4},
        {"model": "my-model"},
        {"image": f"data:image/jpeg;base64,{SIXTEEN_BYTES}"},
        {"image": [f"data:image/{kind};base64,{SIXTEEN_BYTES}" for kind in ("png", "webp", "gif")]},
        {"image": ["https://example.com/a.png"] * 14},
        {"image": "http://example.com/a.png"},
        {"prompt": "请为黑客帝国设计一张高品质的3D海报"},
    ],
)
async def test_valid_variants_are_accepted(relay, session, fields):
    """Documented variants (x ratios, nulls, n up to 4, data URIs, 14 URLs) answer 200."""
    answer = await generate(session, relay, **fields)
    assert len(answer["data"]) == (fields.get("n") or 1)


# --- answers -----------------------------------------------------------------------------------


async def test_b64_answer_holds_the_png(relay, session):
    """A b64_json answer holds the base64 of a PNG and nothing else."""
    answer = await generate(session, relay, response_format="b64_json")
    [item] = answer["data"]
    assert set(item) == {"b64_json"}
    assert png_size(base64.b64decode(item["b64_json"], validate=True)) == (1024, 1024)
    assert relay.downloads == []
