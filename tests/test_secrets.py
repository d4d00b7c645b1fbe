"""Secrets (`_secrets`): the key's repr shows nothing, and escaping errors keep no library frame
locals, while the caller's own frames keep theirs."""

import traceback

import pytest

import gemimg_async as gi
from gemimg_async._secrets import Secret, forget_frames, forgetting
from gemimg_async.testing import FakeClock, Fault
from helpers import SECRET

pytestmark = pytest.mark.anyio


def test_a_secret_is_a_string_whose_repr_shows_nothing():
    """A Secret compares, formats and encodes as its value; only its repr hides it."""
    secret = Secret(f"Bearer {SECRET}")
    assert secret == f"Bearer {SECRET}"
    assert secret.encode() == f"Bearer {SECRET}".encode()
    assert SECRET not in repr(secret)
    assert SECRET not in repr({"Authorization": secret})


def test_forget_frames_empties_library_frames_and_keeps_the_callers():
    """A library frame in an error's traceback loses its locals; the caller's frame keeps them."""
    mine = "the caller's own local"

    def raising_in_the_library() -> None:
        json_text = "{"
        __import__("json").loads(json_text)  # raises inside the stdlib's json

    try:
        raising_in_the_library()
    except ValueError as error:
        forget_frames(error)
        frames = list(traceback.walk_tb(error.__traceback__))
    library = [frame for frame, _ in frames if "json" in frame.f_code.co_filename]
    assert library
    assert all(frame.f_locals == {} for frame in library)
    assert mine == "the caller's own local"
    here = [frame for frame, _ in frames if frame.f_code.co_name == "raising_in_the_library"]
    assert here[0].f_locals["json_text"] == "{"


def test_forgetting_lets_the_exception_through():
    """`with forgetting():` changes nothing about which exception escapes."""
    with pytest.raises(KeyError, match="k"), forgetting():
        raise KeyError("k")


async def test_an_escaping_error_of_a_call_keeps_no_frame_with_the_key(relay_server):
    """A rate-limited call's error, formatted with its locals, never shows the key."""
    relay_server.reset()
    relay_server.api_keys = frozenset({SECRET})
    try:
        relay_server.script(Fault.rate_limited(None))
        retry = gi.RetryPolicy.never()
        async with gi.Client(SECRET, relay_server.url, retry=retry, clock=FakeClock()) as client:
            with pytest.raises(gi.RateLimitError) as caught:
                await client.generate("a fox")
    finally:
        relay_server.api_keys = frozenset({"sk-test"})
    formatted = traceback.TracebackException.from_exception(caught.value, capture_locals=True)
    assert SECRET not in "".join(formatted.format())
