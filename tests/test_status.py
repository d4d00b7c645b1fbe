"""How every error answer a relay gives becomes one of our errors (`_status`): units, then end to
end against the fake relay.
"""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gemimg_async import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ContentPolicyError,
    GemimgError,
    ModelNotServedError,
    RateLimitError,
    ServerError,
)
from gemimg_async._status import _CONTROLS, api_error, error_fields, printable
from gemimg_async.testing import Fault
from helpers import once

pytestmark = pytest.mark.anyio

NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)

OVERLOADED_ZH = "当前分组上游负载已饱和，请稍后再试"  # noqa: RUF001 - Chinese punctuation, as relays write it
BLOCKED_ZH = "您的提示词包含违规内容，请修改后重试"  # noqa: RUF001 - Chinese punctuation, as relays write it

CLOUDFLARE_524 = (
    b"<!DOCTYPE html>\n<html lang='en'><head><title>example.com | 524: A timeout occurred"
    b"</title><style>body{font-family:system-ui;color:#313131}</style>"
    b"<script>window._cf_chl_opt={cvId:'3',cZone:'example.com'};</script></head>"
    b"<body><h1>A timeout occurred</h1><p>Error code 524</p></body></html>"
)


def error(status, body=b"", headers=None, request_id="req_1"):
    return api_error(
        status, CIMultiDict(headers or {}), body, request_id=request_id, now=1_700_000_000.0
    )


def as_json(doc) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


# --- error_fields: JSON shapes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "message", "code"),
    [
        (
            {"error": {"message": "Invalid size", "type": "invalid_request_error", "code": "bad"}},
            "Invalid size",
            "bad",
        ),
        ({"error": {"message": "Invalid size", "code": 400}}, "Invalid size", 400),
        ({"error": {"message": "Invalid size", "code": 0}}, "Invalid size", 0),
        (
            {"error": {"message": "Invalid size", "type": "invalid_request_error"}},
            "Invalid size",
            "invalid_request_error",
        ),
        ({"error": {"message": "Invalid size"}}, "Invalid size", None),
        ({"error": {"msg": "Invalid size", "code": "bad"}}, "Invalid size", "bad"),
        ({"error": "model overloaded"}, "model overloaded", None),
        ({"message": "Invalid token", "code": 401}, "Invalid token", 401),
        ({"message": "Invalid token", "code": "unauthorized"}, "Invalid token", "unauthorized"),
        ({"msg": "余额不足", "code": 1001}, "余额不足", 1001),
        (
            {"error_msg": "Open api qps request limit reached", "code": 18},
            "Open api qps request limit reached",
            18,
        ),
        ({"detail": "Not Found"}, "Not Found", None),
        (
            {"error": {"message": OVERLOADED_ZH, "code": "upstream_error"}},
            OVERLOADED_ZH,
            "upstream_error",
        ),
        (
            {"success": False, "message": "令牌已过期", "code": "token_expired"},
            "令牌已过期",
            "token_expired",
        ),
        ({"message": "rate limited", "code": True}, "rate limited", None),
        ({"message": "rate limited", "code": None}, "rate limited", None),
        ({"message": "rate limited", "code": {"nested": 1}}, "rate limited", None),
        ({"message": 42}, "42", None),
    ],
)
def test_error_fields_reads_every_json_shape(doc, message, code):
    """The message and code are found whatever JSON shape the relay chose."""
    assert error_fields(as_json(doc)) == (message, code)


def test_error_fields_json_without_a_message_gives_the_text():
    """A JSON error with no message field gives the body itself as the message."""
    body = b'{"status": "fail", "data": null}'
    assert error_fields(body) == ('{"status": "fail", "data": null}', None)


def test_error_fields_reads_pretty_printed_json():
    """Whitespace and newlines around and inside the JSON do not matter."""
    body = b'\n\n  {\n  "error": {\n    "message": "Bad key",\n    "code": "k"\n  }\n}\n'
    assert error_fields(body) == ("Bad key", "k")


def test_error_fields_reads_json_after_a_byte_order_mark():
    """A JSON error body that starts with a UTF-8 BOM is read as JSON."""
    body = b"\xef\xbb\xbf" + as_json({"error": {"message": "Bad key", "code": "k"}})
    assert error_fields(body) == ("Bad key", "k")


def test_error_fields_keeps_long_json_messages_whole():
    """A long JSON message is not cut."""
    message = "policy " * 100
    assert error_fields(as_json({"error": {"message": message}})) == (message, None)


# --- error_fields: other bodies ----------------------------------------------------------------


def test_error_fields_html_page_gives_its_text():
    """An nginx error page gives its text without tags."""
    message, code = error_fields(NGINX_502)
    assert "502 Bad Gateway" in message
    assert "<" not in message
    assert "\r" not in message
    assert "\n" not in message
    assert code is None


def test_error_fields_html_drops_scripts_and_styles():
    """A Cloudflare page gives its words, not its script or CSS."""
    message, _ = error_fields(CLOUDFLARE_524)
    assert "A timeout occurred" in message
    assert "524" in message
    assert "_cf_chl_opt" not in message
    assert "font-family" not in message


@pytest.mark.parametrize("body", [b"", b"   ", b"\r\n\r\n"])
def test_error_fields_empty_body(body):
    """An empty body gives a message saying so, never an empty one."""
    assert error_fields(body) == ("(empty body)", None)


def test_error_fields_plain_text():
    """A text body is the message."""
    body = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
    assert error_fields(body) == (body.decode(), None)


def test_error_fields_cuts_long_text():
    """A long non-JSON body is cut to 200 characters."""
    message, _ = error_fields(b"x" * 10_000)
    assert message == "x" * 200


def test_error_fields_survives_bytes_that_are_not_utf8():
    """A body in another encoding gives a message, not a UnicodeDecodeError."""
    message, code = error_fields("服务器繁忙".encode("gbk"))
    assert isinstance(message, str)
    assert message
    assert code is None


def test_error_fields_cut_json_gives_the_text():
    """A JSON body cut short (the read limit) gives its text."""
    body = as_json({"error": {"message": "x" * 500}})[:100]
    message, code = error_fields(body)
    assert message == body.decode()
    assert code is None


# --- api_error: status to class ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, BadRequestError),
        (403, AuthenticationError),
        (404, BadRequestError),
        (405, BadRequestError),
        (408, ServerError),
        (409, BadRequestError),
        (413, BadRequestError),
        (415, BadRequestError),
        (422, BadRequestError),
        (429, RateLimitError),
        (500, ServerError),
        (501, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
        (520, ServerError),
        (524, ServerError),
        (599, ServerError),
    ],
)
@pytest.mark.parametrize(
    "body",
    [
        as_json({"error": {"message": "Something failed", "code": "c"}}),
        as_json({"msg": "Something failed", "code": 7}),
        NGINX_502,
        b"",
    ],
    ids=["openai", "msg", "html", "empty"],
)
def test_every_status_maps_to_its_class(status, cls, body):
    """Each status maps to one error class, whatever the body, with status and request id."""
    err = error(status, body, request_id="req_abc")
    assert type(err) is cls
    assert err.status == status
    assert err.request_id == "req_abc"
    assert err.message
    assert str(err).startswith(f"HTTP {status}: ")
    assert "req_abc" in str(err)


@pytest.mark.parametrize(
    "message",
    [
        "Your request was rejected as a result of our safety system.",
        "Prompt blocked: IMAGE_SAFETY",
        "content_policy_violation",
        "The request was flagged by moderation",
        "This prompt contains prohibited content",
        BLOCKED_ZH,
        "输入内容包含敏感词",
        "图片未通过内容审核",
    ],
)
@pytest.mark.parametrize("status", [400, 422])
def test_blocked_prompts_raise_content_policy_error(status, message):
    """A 4xx whose message says the prompt was blocked raises ContentPolicyError."""
    err = error(status, as_json({"error": {"message": message, "code": "x"}}))
    assert type(err) is ContentPolicyError
    assert isinstance(err, BadRequestError)
    assert err.message == message


@pytest.mark.parametrize(
    "code", ["content_policy_violation", "content-policy", "moderation_blocked"]
)
def test_blocked_prompts_are_recognised_by_code(code):
    """A 400 whose code names the content policy raises ContentPolicyError."""
    err = error(400, as_json({"error": {"message": "Request rejected", "code": code}}))
    assert type(err) is ContentPolicyError


def test_an_ordinary_bad_request_is_not_a_policy_error():
    """A 400 about a bad field is a plain BadRequestError."""
    err = error(400, as_json({"error": {"message": "size must be one of 1:1, 16:9"}}))
    assert type(err) is BadRequestError


@pytest.mark.parametrize(("status", "cls"), [(401, AuthenticationError), (500, ServerError)])
def test_status_wins_over_a_policy_word(status, cls):
    """Only a 4xx other than 401/403/429 becomes ContentPolicyError."""
    err = error(status, as_json({"error": {"message": "safety system unavailable"}}))
    assert type(err) is cls


def test_error_carries_message_and_code():
    """An APIError carries the relay's message and code and shows them in str()."""
    err = error(
        400,
        as_json({"error": {"message": "Invalid size", "code": "invalid_size"}}),
        request_id="req_9",
    )
    assert (err.message, err.code, err.request_id) == ("Invalid size", "invalid_size", "req_9")
    assert str(err) == "HTTP 400: Invalid size (code invalid_size, request id req_9)"


def test_error_without_request_id_or_code_reads_plainly():
    """With no code and no request id, str() is just the status and the message."""
    err = error(500, b"", request_id=None)
    assert str(err) == "HTTP 500: (empty body)"


@pytest.mark.parametrize(("status", "cls"), [(429, RateLimitError), (503, ServerError)])
def test_retry_after_is_carried(status, cls):
    """A Retry-After header is carried on the error as seconds."""
    err = error(status, b"", {"Retry-After": "12"})
    assert type(err) is cls
    assert err.retry_after == 12.0
    assert "retry after 12 s" in str(err)


def test_no_retry_after_is_none():
    """Without Retry-After, retry_after is None."""
    assert error(429, b"").retry_after is None


def test_chinese_server_error_keeps_its_message():
    """A 500 with a Chinese message keeps it intact."""
    err = error(500, as_json({"error": {"message": "上游服务错误", "code": "upstream_error"}}))
    assert type(err) is ServerError
    assert err.message == "上游服务错误"
    assert "上游服务错误" in str(err)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_says_where_to(status):
    """A redirect is an APIError telling the user the address to use instead."""
    err = error(status, b"", {"Location": "https://api.example.org/v1/images/generations"})
    assert isinstance(err, APIError)
    assert err.status == status
    assert "https://api.example.org/v1/images/generations" in err.message
    assert "base_url" in err.message


# --- end to end --------------------------------------------------------------------------------


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


NO_CHANNEL_NEW_API = "分组 default 下模型 m 无可用渠道（distributor）"  # noqa: RUF001 - as new-api writes it
NO_CHANNEL_ONE_API = "当前分组 default 下对于模型 m 无可用渠道"


# --- what a relay says is shown, never obeyed ----------------------------------------------------


@pytest.mark.parametrize(
    ("said", "shown"),
    [
        ("\x1b[2J\x1b[1;31mred\x1b[0m", "red"),
        ("title\x1b]0;owned\x07 after", "title after"),
        ("link \x1b]8;;https://x\x1b\\here\x1b]8;;\x1b\\", "link here"),
        ("bell\x07 nul\x00 c1\x9b31m end", "bell nul c1 end"),
        ("两行\n\tkept", "两行\n\tkept"),
    ],
)
def test_printable_drops_what_a_terminal_would_act_on(said, shown):
    """Escape sequences and control characters go; text, newlines and tabs stay."""
    assert printable(said) == shown


@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("\x1b[]\x07\x9b\n\t")))
def test_printable_leaves_text_without_control_characters_as_it_is(text):
    """Its shortcut for text Python calls printable gives what the full scrub gives."""
    assert printable(text) == _CONTROLS.sub("", text)


def test_an_error_message_from_a_relay_is_printable():
    """An error body's message and code reach our error without control characters."""
    found = error(400, as_json({"error": {"message": "\x1b[2Jbad\x07", "code": "x\x1b[5m"}}))
    assert (found.message, found.code) == ("bad", "x")


@pytest.mark.parametrize(
    ("status", "doc"),
    [
        (503, {"error": {"message": NO_CHANNEL_NEW_API, "code": "model_not_found"}}),
        (503, {"error": {"message": NO_CHANNEL_ONE_API, "type": "one_api_error"}}),
        (500, {"error": {"message": "No available channel for model m under group default"}}),
    ],
)
def test_a_relay_with_no_channel_for_the_model_is_permanent(status, doc):
    """A 5xx that says no channel serves the model is a ModelNotServedError naming it."""
    found = api_error(status, CIMultiDict(), as_json(doc), request_id=None, now=0.0, model="m-4k")
    assert isinstance(found, ModelNotServedError)
    assert "m-4k" in found.message


def test_google_retry_info_is_the_wait_and_a_bad_key_is_authentication():
    """RetryInfo's retryDelay ("7s") is retry_after; API_KEY_INVALID (a 400) is a bad key."""
    body = {
        "error": {
            "code": 429,
            "message": "quota",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}],
        }
    }
    assert error(429, as_json(body)).retry_after == 7.0
    bad_key = {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key."}}
    assert isinstance(error(400, as_json(bad_key)), AuthenticationError)
