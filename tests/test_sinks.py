"""Sinks (`_sinks`): images written as their bytes arrive, within the size cap, and only whole
ones under their final names; end to end against the fake relay.
"""

import contextlib
import errno
import functools
import os
from pathlib import Path

import anyio
import pytest

from gemimg_async import (
    Client,
    ClientClosedError,
    DownloadError,
    GemimgError,
    ImageExpiredError,
    ImageRequest,
    OutcomeUnknownError,
    SaveError,
)
from gemimg_async.testing import Fault
from helpers import API_KEY, FORMATS, listing, reference, untagged, wait_for

pytestmark = pytest.mark.anyio


def part_file_with_bytes(folder: Path) -> bool:
    """A temporary file is in `folder` and part of an image is already on disk."""
    for path in folder.iterdir():
        if path.name.startswith(".gemimg-") and path.name.endswith(".part"):
            try:
                if path.stat().st_size > 0:
                    return True
            except FileNotFoundError:
                continue
    return False


# --- the size cap ------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", FORMATS)
async def test_an_image_at_the_cap_is_accepted(relay, clock, folder, response_format):
    """An image of exactly `max_image_bytes` is saved whole."""
    (png,) = await reference(relay, "a teapot")
    async with Client(API_KEY, relay.url, clock=clock, max_image_bytes=len(png)) as client:
        result = await client.generate("a teapot", response_format=response_format, save_to=folder)
    assert untagged(result.paths[0]) == png
    assert result.images[0].byte_size == result.paths[0].stat().st_size
    assert relay.generation_count == result.attempts == 1


async def test_a_download_over_the_cap_is_refused(relay, clock, folder):
    """A URL whose image is one byte over `max_image_bytes` raises DownloadError, no file."""
    (png,) = await reference(relay, "a teapot")
    async with Client(API_KEY, relay.url, clock=clock, max_image_bytes=len(png) - 1) as client:
        with pytest.raises(DownloadError) as info:
            await client.generate("a teapot", save_to=folder)
    assert "cap" in str(info.value)
    assert relay.download_count == 1
    assert clock.sleeps == []
    assert relay.generation_count == info.value.attempts == 1
    assert listing(folder) == []


@pytest.mark.parametrize("save", [True, False], ids=["save_to", "memory"])
async def test_an_inline_image_over_the_cap_is_refused(relay, clock, folder, save):
    """A b64_json image one byte over the cap raises, is not retried, and leaves no file."""
    (png,) = await reference(relay, "a teapot")
    async with Client(API_KEY, relay.url, clock=clock, max_image_bytes=len(png) - 1) as client:
        with pytest.raises(GemimgError) as info:
            await client.generate(
                "a teapot", response_format="b64_json", save_to=folder if save else None
            )
    assert "cap" in str(info.value)
    assert clock.sleeps == []
    assert relay.generation_count == info.value.attempts == 1
    assert listing(folder) == []


# --- large images ------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", FORMATS)
async def test_large_images_stream_to_identical_files(noisy, clock, folder, response_format):
    """A 12 MB PNG, inline or by URL, lands on disk byte for byte."""
    (png,) = await reference(noisy, "static", model="gemini-3-pro-image-preview-2k")
    async with Client(API_KEY, noisy.url, clock=clock) as client:
        result = await client.generate_2k("static", response_format=response_format, save_to=folder)
    assert len(png) > 10_000_000
    assert untagged(result.paths[0]) == png
    assert listing(folder) == [result.paths[0].name]
    assert noisy.generation_count == result.attempts == 1


# --- atomic files: only whole images ever get their name ---------------------------------------


async def test_truncated_b64_answer_leaves_no_file(relay, client, tmp_path):
    """A b64 answer cut short with save_to leaves neither a partial image nor a temp file."""
    relay.script(Fault.truncate(0.6))
    with pytest.raises(OutcomeUnknownError):
        await client.generate("a fox", response_format="b64_json", save_to=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
async def test_a_truncated_inline_answer_leaves_nothing(noisy, clock, folder, fraction):
    """A b64_json body cut short mid-image removes its temporary file: the folder stays empty."""
    noisy.script(Fault.truncate(fraction))
    async with Client(API_KEY, noisy.url, clock=clock) as client:
        with pytest.raises(OutcomeUnknownError) as info:
            await client.generate_2k("static", response_format="b64_json", save_to=folder)
    assert listing(folder) == []
    assert noisy.generation_count == info.value.attempts == 1


async def test_a_reset_generation_leaves_nothing(relay, client, folder):
    """A connection dropped after the request was sent leaves the folder empty."""
    relay.script(Fault.reset())
    with pytest.raises(OutcomeUnknownError) as info:
        await client.generate("a fox", response_format="b64_json", save_to=folder)
    assert listing(folder) == []
    assert relay.generation_count == info.value.attempts == 1


@pytest.mark.parametrize("fault", [Fault.truncate(0.5), Fault.reset()], ids=["truncate", "reset"])
async def test_a_download_cut_short_every_time_leaves_nothing(noisy, clock, folder, fault):
    """Downloads that die mid-body on every attempt raise DownloadError with the folder empty."""
    noisy.script_download(*[fault] * 6)
    async with Client(API_KEY, noisy.url, clock=clock) as client:
        with pytest.raises(DownloadError) as info:
            await client.generate_2k("static", save_to=folder)
    assert not isinstance(info.value, ImageExpiredError)
    assert listing(folder) == []
    assert noisy.generation_count == info.value.attempts == 1
    assert len(clock.sleeps) == 2


@pytest.mark.parametrize("response_format", FORMATS)
async def test_cancelling_mid_write_leaves_nothing(noisy, clock, folder, response_format):
    """Cancelling a 4K save while part of it is on disk removes the temporary file at once."""
    async with Client(API_KEY, noisy.url, clock=clock) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(
                    client.generate_4k, "static", response_format=response_format, save_to=folder
                )
            )
            await wait_for(lambda: part_file_with_bytes(folder))
            tg.cancel_scope.cancel()
        assert listing(folder) == []
        stats = client.stats
        assert (stats.in_flight, stats.limit, stats.retry_tokens) == (0, 8, 10.0)
    assert noisy.generation_count == 1


@pytest.mark.parametrize("response_format", FORMATS)
async def test_cancelled_then_closed_mid_write_leaves_nothing(
    noisy, clock, folder, response_format
):
    """A save cancelled while its client is closed under it (an app shutting down: two
    cancellations in a row) leaves no temporary file."""
    for _ in range(3):
        client = Client(API_KEY, noisy.url, clock=clock)

        async def save(client: Client = client) -> None:
            with contextlib.suppress(ClientClosedError, OutcomeUnknownError):
                await client.generate_2k("static", response_format=response_format, save_to=folder)

        async with anyio.create_task_group() as tg:
            tg.start_soon(save)
            await wait_for(lambda: part_file_with_bytes(folder))
            tg.cancel_scope.cancel()
            await client.aclose()
        assert listing(folder) == []


@pytest.mark.parametrize("response_format", FORMATS)
async def test_a_full_disk_mid_write_keeps_the_paid_image(
    noisy, clock, folder, monkeypatch, response_format
):
    """ENOSPC after 3 MB of a 12 MB image raises SaveError holding the whole image (its bytes,
    or its URL), leaves nothing in the folder, and is not sent again."""
    from gemimg_async import _sinks  # noqa: PLC0415 - the file class under the aiofiles wrapper

    (png,) = await reference(noisy, "static", model="gemini-3-pro-image-preview-2k")
    noisy.reset()
    real_write = _sinks._GuardedFile.write
    budget = {"left": 3 * 1024 * 1024}

    def write(self, data):
        if len(data) > budget["left"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        budget["left"] -= len(data)
        return real_write(self, data)

    monkeypatch.setattr(_sinks._GuardedFile, "write", write)
    async with Client(API_KEY, noisy.url, clock=clock) as client:
        with pytest.raises(SaveError, match="No space left") as info:
            await client.generate_2k("static", response_format=response_format, save_to=folder)
    [kept] = info.value.result.images
    assert kept.data == png if response_format == "b64_json" else kept.url is not None
    assert listing(folder) == []
    assert noisy.generation_count == 1
    assert noisy.download_count == (1 if response_format == "url" else 0)
    assert clock.sleeps == []


async def test_a_real_write_error_keeps_the_image_in_memory(noisy, clock, folder, monkeypatch):
    """An OSError from the file itself removes the temporary file; the image's bytes, those
    written and those not, come back whole in SaveError's result."""
    from gemimg_async import _sinks  # noqa: PLC0415 - the file class under the aiofiles wrapper

    (png,) = await reference(noisy, "static", model="gemini-3-pro-image-preview-2k")
    real_write = _sinks._GuardedFile.write
    written = {"bytes": 0}

    def write(self, data):
        written["bytes"] += len(data)
        if written["bytes"] > 2 * 1024 * 1024:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return real_write(self, data)

    monkeypatch.setattr(_sinks._GuardedFile, "write", write)
    async with Client(API_KEY, noisy.url, clock=clock) as client:
        with pytest.raises(SaveError, match="quota") as info:
            await client.generate_2k("static", response_format="b64_json", save_to=folder)
    assert info.value.result.images[0].data == png
    assert listing(folder) == []


@pytest.mark.parametrize("response_format", FORMATS)
async def test_a_failing_fsync_keeps_the_paid_image(
    relay, client, folder, monkeypatch, response_format
):
    """A disk error while committing the file raises SaveError with the image, and leaves
    neither temp nor final file."""
    (png,) = await reference(relay, "a fox")
    relay.reset()

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(SaveError) as info:
        await client.generate("a fox", response_format=response_format, save_to=folder)
    [kept] = info.value.result.images
    assert kept.data == png if response_format == "b64_json" else kept.url is not None
    assert listing(folder) == []
    assert relay.generation_count == 1
    assert relay.download_count == (1 if response_format == "url" else 0)


# --- final names -------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", FORMATS)
async def test_overwrite_replaces_the_symlink_itself(
    relay, client, tmp_path, folder, response_format
):
    """With overwrite=True the link is replaced by the image; the file it pointed to is kept."""
    (png,) = await reference(relay, "a fox")
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"do not touch")
    final = folder / "poster_0.png"
    final.symlink_to(outside)
    request = ImageRequest("a fox", id="poster", response_format=response_format)
    result = await client.send(request, save_to=folder, overwrite=True)
    assert result.paths == (final,)
    assert not final.is_symlink()
    assert untagged(final) == png
    assert outside.read_bytes() == b"do not touch"
    assert listing(folder) == ["poster_0.png"]
    assert relay.generation_count == result.attempts == 1


async def test_a_name_taken_while_the_image_was_made_gets_a_spare_name(relay, folder):
    """A file put under the image's name by someone else while the image was being made: the
    paid image is kept under `{id}_0-{key}.png`; the other file is not overwritten."""
    relay.latency = 0.3
    try:
        async with Client(API_KEY, relay.url) as client:

            async def outcomes():
                requests = [ImageRequest("a fox", id="fox")]
                return [outcome async for outcome in client.map(requests, save_to=folder)]

            async with anyio.create_task_group() as group:
                done = []
                group.start_soon(lambda: _into(done, outcomes()))
                await wait_for(lambda: relay.in_flight == 1)
                (folder / "fox_0.png").write_bytes(b"someone else's fox")
    finally:
        relay.latency = 0.0
    (outcome,) = done[0]
    assert outcome.ok
    assert outcome.paths[0].name == f"fox_0-{outcome.result.idempotency_key[:8]}.png"
    assert (folder / "fox_0.png").read_bytes() == b"someone else's fox"
    assert listing(folder) == sorted(["fox_0.png", outcome.paths[0].name])
    assert relay.generation_count == 1


async def _into(box, awaitable):
    box.append(await awaitable)
