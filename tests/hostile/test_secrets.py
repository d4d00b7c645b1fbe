"""Hardening issue, "Secrets": the key is readable from nothing that escapes, and a batch never
writes outside its folder.

Bullet -> tests (each failed before the fix; see tests/hostile/README.md):

- the key readable from the frames of an escaping exception, cancellation included ->
  `test_the_key_is_in_no_frame_of_a_cancelled_call`,
  `test_the_key_is_in_no_frame_of_an_error`
- a symlink planted as the manifest or the send log ->
  `test_a_symlink_planted_in_the_output_folder_is_refused`

"Readable" is what a reporter that prints locals reads: `traceback.TracebackException(...,
capture_locals=True)` (as rich's show_locals and Sentry-style reporters do), and the repr of every
local of every frame of the exception and of everything chained to it, of what those locals hold
(mappings and sequences, headers included) and of their attributes, one level down.
"""

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable

import anyio
import pytest

import gemimg_async as gi
from gemimg_async.testing import FakeClock
from hostile.servers import Reply, ScriptedRelay, SilentRelay, big_png, error_json
from hostile.support import SECRET, once, where_readable

pytestmark = pytest.mark.anyio

# An inline image of 6.5 MB: an 8.7 MB body, more than the client's socket buffer (4 MB at
# most) and the relay's (64 KB) hold, so against a relay that does not read it the upload is
# still going when the call is cancelled.
LARGE_INPUTS = [big_png(6_500_000)]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _escaping(call: Callable[[], Awaitable[object]]) -> BaseException:
    """What escapes `call()`, as it left it."""
    try:
        await call()
    except BaseException as error:  # noqa: BLE001 - cancellation is one of the exits under test
        return error
    raise AssertionError("nothing escaped")


# --- cancellation ------------------------------------------------------------------------------


async def _cancel_the_task(call: Callable[[], Awaitable[object]], arrived: anyio.Event):
    kept: list[BaseException] = []

    async def run() -> None:
        kept.append(await _escaping(call))

    task = asyncio.create_task(run())
    with anyio.fail_after(10):
        await arrived.wait()
    await anyio.sleep(0.2)  # the upload fills the socket buffers, or the wait for the answer
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return kept[0]


async def _asyncio_timeout(call, _arrived):
    async def run() -> None:
        async with asyncio.timeout(0.5):
            await call()

    return await _escaping(run)


async def _asyncio_wait_for(call, _arrived):
    return await _escaping(lambda: asyncio.wait_for(call(), 0.5))


async def _anyio_fail_after(call, _arrived):
    async def run() -> None:
        with anyio.fail_after(0.5):
            await call()

    return await _escaping(run)


@pytest.mark.parametrize(
    "cancel",
    [_cancel_the_task, _asyncio_timeout, _asyncio_wait_for, _anyio_fail_after],
    ids=["task.cancel", "asyncio.timeout", "asyncio.wait_for", "anyio.fail_after"],
)
@pytest.mark.parametrize("phase", ["uploading", "awaiting-the-answer"])
async def test_the_key_is_in_no_frame_of_a_cancelled_call(cancel, phase):
    """A call cancelled (task.cancel, asyncio.timeout, wait_for, fail_after) while its request
    is uploaded or awaits the answer lets out an exception from which the key cannot be read:
    no formatted traceback with locals, no local of any frame (aiohttp's `headers`)."""
    async with (
        SilentRelay(read_body=phase != "uploading", receive_buffer=64 * 1024) as relay,
        gi.Client(SECRET, relay.url, clock=FakeClock()) as client,
    ):
        inputs = LARGE_INPUTS if phase == "uploading" else None
        error = await cancel(lambda: client.generate("a fox", images=inputs), relay.arrived)
        assert relay.requests == 1
    assert isinstance(error, (asyncio.CancelledError, TimeoutError)), repr(error)
    assert where_readable(error, SECRET) == []


# --- every error class -------------------------------------------------------------------------


def _answering(reply: Reply):
    async def make(stack):
        return await stack.enter_async_context(ScriptedRelay(default=reply))

    return make


async def _silent(stack):
    return await stack.enter_async_context(SilentRelay())


async def _nothing_listening(_stack):
    class Closed:
        url = f"http://127.0.0.1:{closed_port()}"

    return Closed()


async def _expired_url(stack):
    relay = await stack.enter_async_context(ScriptedRelay())
    doc = {"created": 1, "data": [{"url": relay.file_url("gone.png")}]}
    relay.default = Reply(body=json.dumps(doc).encode())
    return relay


async def _unreachable_url(stack):
    doc = {"created": 1, "data": [{"url": f"http://127.0.0.1:{closed_port()}/a.png"}]}
    relay = ScriptedRelay(default=Reply(body=json.dumps(doc).encode()))
    return await stack.enter_async_context(relay)


SAFETY = "Your request was blocked by the safety system"
RETRY_AFTER = {"Retry-After": "1"}
ERRORS = [
    (_answering(Reply(401, error_json("Invalid token", 401))), gi.AuthenticationError),
    (_answering(Reply(400, error_json("bad size", "invalid_size"))), gi.BadRequestError),
    (_answering(Reply(400, error_json(SAFETY, "content_policy_violation"))), gi.ContentPolicyError),
    (_answering(Reply(429, error_json("slow down", 429), headers=RETRY_AFTER)), gi.RateLimitError),
    (_answering(Reply(500, error_json("upstream failed", "server_error"))), gi.ServerError),
    (_answering(Reply(200, b'{"created": 1, "data": []}')), gi.RefusalError),
    (_answering(Reply(200, b"<html>maintenance</html>", "text/html")), gi.MalformedResponseError),
    (_nothing_listening, gi.ConnectError),
    (_silent, gi.OutcomeUnknownError),
    (_unreachable_url, gi.DownloadError),
    (_expired_url, gi.ImageExpiredError),
]  # fmt: skip


@pytest.mark.parametrize(
    ("relay_for", "error_class"), ERRORS, ids=[cls.__name__ for _, cls in ERRORS]
)
async def test_the_key_is_in_no_frame_of_an_error(tmp_path, relay_for, error_class):
    """Each error class, as it escapes a call, lets no one read the key: not its traceback
    formatted with locals, not any frame's locals, not what they hold (the transport's
    attributes included)."""
    async with contextlib.AsyncExitStack() as stack:
        relay = await relay_for(stack)
        client = await stack.enter_async_context(
            once(relay.url, key=SECRET, timeouts=gi.Timeouts(read=0.3))
        )
        error = await _escaping(lambda: client.generate("a fox", save_to=tmp_path))
    assert type(error) is error_class, repr(error)
    assert where_readable(error, SECRET) == []


async def test_the_key_is_in_no_frame_of_a_closed_client_error():
    """ClientClosedError, raised by a call on a closed client, lets no one read the key."""
    async with ScriptedRelay() as relay:
        client = once(relay.url, key=SECRET)
        await client.generate("a fox")
        await client.aclose()
        error = await _escaping(lambda: client.generate("a fox"))
    assert type(error) is gi.ClientClosedError, repr(error)
    assert where_readable(error, SECRET) == []


# --- a batch writes inside its folder only ------------------------------------------------------


@pytest.mark.parametrize("name", ["manifest.jsonl", ".manifest-sent.jsonl"])
async def test_a_symlink_planted_in_the_output_folder_is_refused(relay, tmp_path, name):
    """A symlink planted as the manifest or its send log makes the batch refuse the folder (our
    error, naming it) before anything is sent; the file it points to is left as it was."""
    victim = tmp_path / "elsewhere" / "precious.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"precious\nlines\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    error: Exception | None = None
    async with once(relay.url) as client:
        try:
            await gi.run_batch(client, [gi.ImageRequest("a fox")], out)
        except Exception as escaped:  # noqa: BLE001 - which class is the question
            error = escaped
    assert victim.read_bytes() == b"precious\nlines\n", "the batch wrote through the symlink"
    assert isinstance(error, gi.GemimgError), f"the batch went on: {error!r}"
    assert name in str(error)
    assert relay.requests == []
