"""Streaming saves (issue 3): every image goes straight to its file, and only a whole one stays.

Everything runs through the client against the fake relay over real HTTP on 127.0.0.1. Reference
bytes come from a plain aiohttp request to the relay, decoded by hand, never from the client.
"""

import base64
import contextlib
import errno
import functools
import os
from pathlib import Path

import aiohttp
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
    ValidationError,
)
from gemimg_async._sinks import AtomicFile
from gemimg_async.testing import QUIRKS, Fault

pytestmark = pytest.mark.anyio

KEY = "sk-test"
STANDARD = "gemini-3-pro-image-preview"
FORMATS = ("url", "b64_json")


@pytest.fixture
def folder(tmp_path):
    """An existing, empty target folder."""
    path = tmp_path / "out"
    path.mkdir()
    return path


def listing(folder: Path) -> list[str]:
    """Every name in `folder`, hidden `.gemimg-*.part` files included."""
    return sorted(path.name for path in folder.iterdir())


async def served_pngs(relay, prompt, *, n=1, model=STANDARD) -> list[bytes]:
    """The PNGs the relay serves for `prompt`, decoded by hand from a plain b64_json answer."""
    body = {"model": model, "prompt": prompt, "n": n, "response_format": "b64_json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{relay.url}/v1/images/generations",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
        ) as response,
    ):
        assert response.status == 200
        doc = await response.json()
    return [base64.b64decode(item["b64_json"]) for item in doc["data"]]


async def reference(relay, prompt, *, n=1, model=STANDARD) -> list[bytes]:
    """`served_pngs`, then the relay's records wiped so the test counts only the client."""
    pngs = await served_pngs(relay, prompt, n=n, model=model)
    relay.reset()
    return pngs


async def poll(condition, *, attempts: int = 10_000) -> None:
    """Let other tasks run until `condition()` holds."""
    for _ in range(attempts):
        if condition():
            return
        await anyio.sleep(0.001)
    raise AssertionError("the condition never held")


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


# --- url answers: downloaded at once, without the key ------------------------------------------


async def test_url_answers_are_downloaded_at_once_without_the_key(relay, client, folder):
    """`save_to` fetches each URL during the call, through a session with no Authorization."""
    expected = await reference(relay, "two foxes", n=2)
    result = await client.generate("two foxes", n=2, save_to=folder)
    assert relay.download_count == 2
    assert [download.authorization for download in relay.downloads] == [None, None]
    for download in relay.downloads:
        assert all(KEY not in value for value in download.headers.values())
    assert [path.read_bytes() for path in result.paths] == expected
    assert listing(folder) == sorted(path.name for path in result.paths)
    assert all(image.url for image in result.images)
    assert relay.generation_count == result.attempts == 1


async def test_saving_a_url_result_later_carries_no_key_either(relay, client, folder):
    """`result.save` downloads through the keyless session too."""
    expected = await reference(relay, "a heron")
    result = await client.generate("a heron")
    assert relay.download_count == 0
    paths = await result.save(folder)
    assert [path.read_bytes() for path in paths] == expected
    assert [download.authorization for download in relay.downloads] == [None]
    assert relay.generation_count == result.attempts == 1


@pytest.mark.parametrize(
    "faults",
    [
        (Fault.status(429),),
        (Fault.status(500),),
        (Fault.status(502),),
        (Fault.status(503),),
        (Fault.status(504),),
        (Fault.reset(), Fault.reset()),  # aiohttp itself resends a GET once after a reset
        (Fault.truncate(),),
    ],
    ids=["429", "500", "502", "503", "504", "reset", "truncate"],
)
async def test_download_is_retried_after_transient_failures(relay, client, clock, folder, faults):
    """A download that hit a connection error, a 429 or a 5xx is fetched again, with backoff."""
    expected = await reference(relay, "a lighthouse")
    relay.script_download(*faults)
    result = await client.generate("a lighthouse", save_to=folder)
    assert [path.read_bytes() for path in result.paths] == expected
    assert len(clock.sleeps) == 1
    assert 0.25 <= clock.sleeps[0] <= 0.5
    assert relay.download_count == len(faults) + 1
    assert relay.generation_count == result.attempts == 1
    assert listing(folder) == [result.paths[0].name]


async def test_download_gives_up_after_its_attempts(relay, client, clock, folder):
    """Three failing downloads raise DownloadError, leave no file, and never re-generate."""
    relay.script_download(*[Fault.status(503)] * 3)
    with pytest.raises(DownloadError) as info:
        await client.generate("a lighthouse", save_to=folder)
    assert not isinstance(info.value, ImageExpiredError)
    assert info.value.status == 503
    assert relay.download_count == 3
    assert len(clock.sleeps) == 2
    assert relay.generation_count == info.value.attempts == 1
    assert listing(folder) == []


@pytest.mark.parametrize("status", [400, 401, 405, 451])
async def test_download_client_errors_are_not_retried(relay, client, clock, folder, status):
    """An image host's 4xx (other than expiry and 429) will not change: no second GET."""
    relay.script_download(Fault.status(status))
    with pytest.raises(DownloadError) as info:
        await client.generate("a lighthouse", save_to=folder)
    assert info.value.status == status
    assert relay.download_count == 1
    assert clock.sleeps == []
    assert listing(folder) == []


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_expired_url_statuses_raise_image_expired(relay, client, clock, folder, status):
    """403/404/410 from the image host mean the URL expired: ImageExpiredError, not retried."""
    relay.script_download(Fault.status(status))
    with pytest.raises(ImageExpiredError) as info:
        await client.generate("a lighthouse", save_to=folder)
    assert "expired" in str(info.value).lower()
    assert info.value.status == status
    assert info.value.url.startswith(relay.url)
    assert relay.download_count == 1
    assert clock.sleeps == []
    assert relay.generation_count == info.value.attempts == 1
    assert listing(folder) == []


async def test_saving_after_the_url_expired_raises_image_expired(relay, client, clock, folder):
    """A URL result saved after the relay dropped the file says it expired, and writes nothing."""
    result = await client.generate("a lighthouse")
    relay.expire_files()
    with pytest.raises(ImageExpiredError) as info:
        await result.save(folder)
    assert "expired" in str(info.value).lower()
    assert info.value.status == 410
    assert relay.download_count == 1
    assert clock.sleeps == []
    assert listing(folder) == []


async def test_an_html_page_instead_of_the_image_is_a_download_error(relay, client, folder):
    """A 200 HTML page where the PNG should be raises DownloadError and leaves no file."""
    relay.script_download(Fault.html())
    with pytest.raises(DownloadError) as info:
        await client.generate("a lighthouse", save_to=folder)
    assert not isinstance(info.value, ImageExpiredError)
    assert "html" in str(info.value).lower()
    assert relay.download_count == 1
    assert relay.generation_count == info.value.attempts == 1
    assert listing(folder) == []


# --- the size cap ------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", FORMATS)
async def test_an_image_at_the_cap_is_accepted(relay, clock, folder, response_format):
    """An image of exactly `max_image_bytes` is saved whole."""
    (png,) = await reference(relay, "a teapot")
    async with Client(KEY, relay.url, clock=clock, max_image_bytes=len(png)) as client:
        result = await client.generate("a teapot", response_format=response_format, save_to=folder)
    assert result.paths[0].read_bytes() == png
    assert result.images[0].byte_size == len(png)
    assert relay.generation_count == result.attempts == 1


async def test_a_download_over_the_cap_is_refused(relay, clock, folder):
    """A URL whose image is one byte over `max_image_bytes` raises DownloadError, no file."""
    (png,) = await reference(relay, "a teapot")
    async with Client(KEY, relay.url, clock=clock, max_image_bytes=len(png) - 1) as client:
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
    async with Client(KEY, relay.url, clock=clock, max_image_bytes=len(png) - 1) as client:
        with pytest.raises(GemimgError) as info:
            await client.generate(
                "a teapot", response_format="b64_json", save_to=folder if save else None
            )
    assert "cap" in str(info.value)
    assert clock.sleeps == []
    assert relay.generation_count == info.value.attempts == 1
    assert listing(folder) == []


# --- any valid encoding gives the same bytes ---------------------------------------------------


@pytest.mark.parametrize("quirk", QUIRKS)
@pytest.mark.parametrize("response_format", FORMATS)
async def test_every_answer_shape_saves_the_served_png(
    relay, client, folder, quirk, response_format
):
    """Whatever shape the relay gives its answer, the saved files are the PNGs it served."""
    expected = await reference(relay, "a koi pond", n=2)
    relay.script(Fault.quirk(quirk))
    result = await client.generate(
        "a koi pond", n=2, response_format=response_format, save_to=folder
    )
    assert [path.read_bytes() for path in result.paths] == expected
    assert [path.name for path in result.paths] == [f"{result.stem}_0.png", f"{result.stem}_1.png"]
    assert listing(folder) == sorted(path.name for path in result.paths)
    assert [image.byte_size for image in result.images] == [len(png) for png in expected]
    assert relay.generation_count == result.attempts == 1
    assert all(download.authorization is None for download in relay.downloads)


@pytest.mark.parametrize("quirk", QUIRKS)
@pytest.mark.parametrize("response_format", FORMATS)
async def test_every_answer_shape_without_save_to(relay, client, folder, quirk, response_format):
    """Without `save_to`, inline images hold the served bytes, URLs stay URLs; both save alike."""
    expected = await reference(relay, "a koi pond", n=2)
    relay.script(Fault.quirk(quirk))
    result = await client.generate("a koi pond", n=2, response_format=response_format)
    for image, png in zip(result.images, expected, strict=True):
        assert image.path is None
        if image.data is not None:
            assert image.data == png
            assert image.url is None
        else:
            assert image.url is not None
            assert image.url.startswith(("http://", "https://"))
    paths = await result.save(folder)
    assert [path.read_bytes() for path in paths] == expected
    assert listing(folder) == sorted(path.name for path in paths)
    assert relay.generation_count == result.attempts == 1


async def test_b64_results_in_memory_are_the_served_png(relay, client):
    """A b64_json answer without `save_to` holds exactly the served bytes, with their type."""
    expected = await reference(relay, "an owl", n=3)
    result = await client.generate("an owl", n=3, response_format="b64_json")
    assert [image.data for image in result.images] == expected
    assert all(image.media_type == "image/png" for image in result.images)
    assert all((image.width, image.height) == (1024, 1024) for image in result.images)
    assert result.paths == ()
    assert relay.download_count == 0
    assert relay.generation_count == result.attempts == 1


@pytest.mark.parametrize("response_format", FORMATS)
async def test_large_images_stream_to_identical_files(noisy, clock, folder, response_format):
    """A 12 MB PNG, inline or by URL, lands on disk byte for byte."""
    (png,) = await reference(noisy, "static", model="gemini-3-pro-image-preview-2k")
    async with Client(KEY, noisy.url, clock=clock) as client:
        result = await client.generate_2k("static", response_format=response_format, save_to=folder)
    assert len(png) > 10_000_000
    assert result.paths[0].read_bytes() == png
    assert listing(folder) == [result.paths[0].name]
    assert noisy.generation_count == result.attempts == 1


# --- atomic files: only whole images ever get their name ---------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
async def test_a_truncated_inline_answer_leaves_nothing(noisy, clock, folder, fraction):
    """A b64_json body cut short mid-image removes its temporary file: the folder stays empty."""
    noisy.script(Fault.truncate(fraction))
    async with Client(KEY, noisy.url, clock=clock) as client:
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
    async with Client(KEY, noisy.url, clock=clock) as client:
        with pytest.raises(DownloadError) as info:
            await client.generate_2k("static", save_to=folder)
    assert not isinstance(info.value, ImageExpiredError)
    assert listing(folder) == []
    assert noisy.generation_count == info.value.attempts == 1
    assert len(clock.sleeps) == 2


@pytest.mark.parametrize("response_format", FORMATS)
async def test_cancelling_mid_write_leaves_nothing(noisy, clock, folder, response_format):
    """Cancelling a 4K save while part of it is on disk removes the temporary file at once."""
    async with Client(KEY, noisy.url, clock=clock) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(
                    client.generate_4k, "static", response_format=response_format, save_to=folder
                )
            )
            await poll(lambda: part_file_with_bytes(folder))
            tg.cancel_scope.cancel()
        assert listing(folder) == []
        stats = client.stats
        assert (stats.in_flight, stats.limit, stats.retry_tokens) == (0, 8, 10.0)
    assert noisy.generation_count == 1


@pytest.mark.parametrize("response_format", FORMATS)
async def test_a_full_disk_mid_write_leaves_nothing(
    noisy, clock, folder, monkeypatch, response_format
):
    """ENOSPC after 3 MB of a 12 MB image raises OSError, removes the temp file, is not retried."""
    real_write = AtomicFile.write
    budget = {"left": 3 * 1024 * 1024}

    async def write(self, data):
        if len(data) > budget["left"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        budget["left"] -= len(data)
        await real_write(self, data)

    monkeypatch.setattr(AtomicFile, "write", write)
    async with Client(KEY, noisy.url, clock=clock) as client:
        with pytest.raises(OSError) as info:
            await client.generate_2k("static", response_format=response_format, save_to=folder)
    assert info.value.errno == errno.ENOSPC
    assert listing(folder) == []
    assert noisy.generation_count == 1
    assert noisy.download_count == (1 if response_format == "url" else 0)
    assert clock.sleeps == []


@pytest.mark.parametrize("response_format", FORMATS)
async def test_a_failing_fsync_leaves_nothing(relay, client, folder, monkeypatch, response_format):
    """A disk error while committing the file raises and leaves neither temp nor final file."""

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        await client.generate("a fox", response_format=response_format, save_to=folder)
    assert info.value.errno == errno.ENOSPC
    assert listing(folder) == []
    assert relay.generation_count == 1
    assert relay.download_count == (1 if response_format == "url" else 0)


# --- never through a symlink, never outside the folder -----------------------------------------


@pytest.mark.parametrize("response_format", FORMATS)
async def test_a_symlink_at_the_final_name_is_not_followed(
    relay, client, tmp_path, folder, response_format
):
    """A symlink where the image would go raises FileExistsError before anything is paid."""
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"do not touch")
    (folder / "poster_0.png").symlink_to(outside)
    request = ImageRequest("a fox", id="poster", response_format=response_format)
    with pytest.raises(FileExistsError):
        await client.send(request, save_to=folder)
    assert outside.read_bytes() == b"do not touch"
    assert (folder / "poster_0.png").is_symlink()
    assert listing(folder) == ["poster_0.png"]
    assert relay.generation_count == 0


async def test_a_dangling_symlink_at_the_final_name_is_not_followed(
    relay, client, tmp_path, folder
):
    """A symlink to nowhere is not written through: nothing appears at its target."""
    target = tmp_path / "elsewhere.png"
    (folder / "poster_0.png").symlink_to(target)
    with pytest.raises(FileExistsError):
        await client.send(ImageRequest("a fox", id="poster"), save_to=folder)
    assert not target.exists()
    assert listing(folder) == ["poster_0.png"]
    assert relay.generation_count == 0


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
    assert final.read_bytes() == png
    assert outside.read_bytes() == b"do not touch"
    assert listing(folder) == ["poster_0.png"]
    assert relay.generation_count == result.attempts == 1


@pytest.mark.parametrize("response_format", FORMATS)
async def test_an_existing_file_is_kept_unless_overwrite(relay, client, folder, response_format):
    """A file at the final name is refused before paying; overwrite=True replaces it whole."""
    (png,) = await reference(relay, "a fox")
    final = folder / "poster_0.png"
    final.write_bytes(b"an older poster")
    request = ImageRequest("a fox", id="poster", response_format=response_format)
    with pytest.raises(FileExistsError):
        await client.send(request, save_to=folder)
    assert final.read_bytes() == b"an older poster"
    assert listing(folder) == ["poster_0.png"]
    result = await client.send(request, save_to=folder, overwrite=True)
    assert final.read_bytes() == png
    assert listing(folder) == ["poster_0.png"]
    assert relay.generation_count == result.attempts == 1


@pytest.mark.parametrize(
    "bad_id", ["../x", "a/b", "/etc/passwd", "a\\b", "..", ".hidden", "-rf", "", "x\x00y", "a/../b"]
)
def test_ids_that_are_not_plain_names_are_rejected(bad_id):
    """A request id that could leave the folder (or hide in it) is refused up front."""
    with pytest.raises(ValidationError):
        ImageRequest("a fox", id=bad_id)


@pytest.mark.parametrize("stem", ["../escape", "sub/escape", "{tmp_path}/escape", "..\\escape"])
async def test_save_rejects_stems_with_path_separators(relay, client, tmp_path, folder, stem):
    """`result.save(stem=...)` refuses a stem that would put the file outside the folder."""
    stem = stem.format(tmp_path=tmp_path)
    result = await client.generate("a fox", response_format="b64_json")
    before = listing(tmp_path)
    with pytest.raises(ValueError):
        await result.save(folder, stem=stem)
    assert listing(folder) == []
    assert listing(tmp_path) == before
    assert relay.generation_count == result.attempts == 1


# --- found in review: cancellation twice, disks that fail for real, names taken meanwhile -------


@pytest.mark.parametrize("response_format", FORMATS)
async def test_cancelled_then_closed_mid_write_leaves_nothing(
    noisy, clock, folder, response_format
):
    """A save cancelled while its client is closed under it (an app shutting down: two
    cancellations in a row) leaves no temporary file."""
    for _ in range(3):
        client = Client(KEY, noisy.url, clock=clock)

        async def save(client: Client = client) -> None:
            with contextlib.suppress(ClientClosedError, OutcomeUnknownError):
                await client.generate_2k("static", response_format=response_format, save_to=folder)

        async with anyio.create_task_group() as tg:
            tg.start_soon(save)
            await poll(lambda: part_file_with_bytes(folder))
            tg.cancel_scope.cancel()
            await client.aclose()
        assert listing(folder) == []


async def test_a_real_write_error_leaves_nothing(noisy, clock, folder, monkeypatch):
    """An OSError from the file itself (not a mock of our writer) removes the temporary file."""
    from gemimg_async import _sinks  # noqa: PLC0415 - the file class under the aiofiles wrapper

    real_write = _sinks._GuardedFile.write
    written = {"bytes": 0}

    def write(self, data):
        written["bytes"] += len(data)
        if written["bytes"] > 2 * 1024 * 1024:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return real_write(self, data)

    monkeypatch.setattr(_sinks._GuardedFile, "write", write)
    async with Client(KEY, noisy.url, clock=clock) as client:
        with pytest.raises(OSError, match="quota"):
            await client.generate_2k("static", response_format="b64_json", save_to=folder)
    assert listing(folder) == []


async def test_a_name_taken_while_the_image_was_made_gets_a_spare_name(relay, folder):
    """Two requests for one id in flight together are both paid for, so both are kept: the
    second under `{id}_0-{key}.png`; nothing is overwritten."""
    relay.latency = 0.05
    try:
        async with Client(KEY, relay.url) as client:
            requests = [ImageRequest("a fox", id="fox"), ImageRequest("a cat", id="fox")]
            outcomes = [outcome async for outcome in client.map(requests, save_to=folder)]
    finally:
        relay.latency = 0.0
    assert all(outcome.ok for outcome in outcomes)
    spare = next(o for o in outcomes if o.paths[0].name != "fox_0.png")
    assert spare.paths[0].name == f"fox_0-{spare.result.idempotency_key[:8]}.png"
    assert listing(folder) == sorted(["fox_0.png", spare.paths[0].name])
    assert relay.generation_count == 2
