"""Saving (`_save`): placing paid images, downloading URLs without the key and with retries, and
`result.save()`; end to end against the fake relay.
"""

import pytest

from gemimg_async import (
    Client,
    DownloadError,
    GeneratedImage,
    GenerationResult,
    ImageExpiredError,
    ImageRequest,
    Timings,
)
from gemimg_async.testing import FakeClock, Fault
from helpers import (
    API_KEY,
    FORMATS,
    file_png_size,
    jpeg,
    listing,
    no_temp_files,
    once,
    reference,
    untagged,
)

pytestmark = pytest.mark.anyio


# --- url answers: downloaded without the key ---------------------------------------------------


async def test_url_format_returns_a_url_and_fetches_it_without_the_key(relay, client, tmp_path):
    """A url answer holds the image host's URL; saving fetches it with no Authorization."""
    result = await client.generate("a lighthouse")
    assert relay.requests[-1].response_format == "url"
    [image] = result.images
    assert image.url is not None
    assert image.url.startswith(f"{relay.url}/files/")
    assert image.data is None
    assert image.path is None
    assert relay.downloads == []
    [path] = (await result.save(tmp_path)).paths
    assert file_png_size(path) == (1024, 1024)
    assert len(relay.downloads) == 1
    assert relay.downloads[0].authorization is None


async def test_url_answers_are_downloaded_at_once_without_the_key(relay, client, folder):
    """`save_to` fetches each URL during the call, through a session with no Authorization."""
    expected = await reference(relay, "two foxes", n=2)
    result = await client.generate("two foxes", n=2, save_to=folder)
    assert relay.download_count == 2
    assert [download.authorization for download in relay.downloads] == [None, None]
    for download in relay.downloads:
        assert all(API_KEY not in value for value in download.headers.values())
    assert [untagged(path) for path in result.paths] == expected
    assert listing(folder) == sorted(path.name for path in result.paths)
    assert all(image.url for image in result.images)
    assert relay.generation_count == result.attempts == 1


async def test_saving_a_url_result_later_carries_no_key_either(relay, client, folder):
    """`result.save` downloads through the keyless session too."""
    expected = await reference(relay, "a heron")
    result = await client.generate("a heron")
    assert relay.download_count == 0
    paths = list((await result.save(folder)).paths)
    assert [untagged(path) for path in paths] == expected
    assert [download.authorization for download in relay.downloads] == [None]
    assert relay.generation_count == result.attempts == 1


async def test_url_result_has_no_pixel_size_until_saved(relay, client, tmp_path):
    """A url image's size is unknown in memory; save_to measures it from the bytes."""
    in_memory = await client.generate("a fox", size="9:16")
    assert in_memory.images[0].width is None
    on_disk = await client.generate("a fox", size="9:16", save_to=tmp_path)
    image = on_disk.images[0]
    assert (image.media_type, image.width, image.height) == ("image/png", 768, 1376)


# --- downloads that fail -----------------------------------------------------------------------


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
    assert [untagged(path) for path in result.paths] == expected
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


async def test_save_of_an_expired_url_raises_image_expired(relay, client, tmp_path):
    """Saving a URL the host no longer serves raises ImageExpiredError with the status."""
    result = await client.generate("a fox")
    relay.expire_files()
    with pytest.raises(ImageExpiredError) as caught:
        await result.save(tmp_path)
    assert caught.value.status == 410
    assert caught.value.url == result.images[0].url
    assert isinstance(caught.value, DownloadError)
    assert list(tmp_path.iterdir()) == []


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


@pytest.mark.parametrize(
    ("fault", "status"),
    [(Fault.status(500), 500), (Fault.html(), 200), (Fault.truncate(0.5), None)],
)
async def test_failed_download_raises_download_error(relay, tmp_path, fault, status):
    """A download that fails, serves HTML or is cut short raises DownloadError; no file is left."""
    async with once(relay.url) as client:
        relay.script_download(fault)
        with pytest.raises(DownloadError) as caught:
            await client.generate("a fox", save_to=tmp_path)
    assert caught.value.status == status
    assert caught.value.url.startswith(f"{relay.url}/files/")
    assert caught.value.request_id == relay.requests[-1].request_id
    assert caught.value.idempotency_key == relay.requests[-1].idempotency_key
    assert list(tmp_path.iterdir()) == []


# --- result.save() -----------------------------------------------------------------------------


async def test_save_names_files_stem_index_ext_not_the_server_name(relay, client, tmp_path):
    """save() writes {stem}_{i}.png, never the URL's file name."""
    result = await client.generate("a fox", n=2)
    server_names = {url.rsplit("/", 1)[-1] for url in (i.url for i in result.images) if url}
    paths = list((await result.save(tmp_path, stem="fox")).paths)
    assert [p.name for p in paths] == ["fox_0.png", "fox_1.png"]
    assert not server_names & {p.name for p in tmp_path.iterdir()}


async def test_save_takes_the_extension_from_the_bytes(client, tmp_path):
    """Image bytes that are a JPEG are saved as .jpg, whatever else is claimed."""
    result = GenerationResult(
        request=ImageRequest("a fox"),
        images=(GeneratedImage(0, data=jpeg(), media_type="image/png"),),
        created=None,
        idempotency_key="k",
        request_ids=(),
        attempts=1,
        timings=Timings(),
        stem="fox",
    )
    [path] = (await result.save(tmp_path)).paths
    assert path == tmp_path / "fox_0.jpg"
    assert path.read_bytes() == jpeg()


async def test_save_writes_b64_bytes_exactly(relay, client, tmp_path):
    """save() of a b64 result writes the decoded bytes as they are."""
    result = await client.generate("a fox", response_format="b64_json")
    [path] = (await result.save(tmp_path)).paths
    assert untagged(path) == result.images[0].data
    assert relay.downloads == []


async def test_save_never_overwrites(relay, client, tmp_path):
    """save() into a folder where the name exists raises FileExistsError and keeps the file."""
    result = await client.generate("a fox", response_format="b64_json")
    existing = tmp_path / f"{result.stem}_0.png"
    existing.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        await result.save(tmp_path)
    assert existing.read_bytes() == b"precious"
    assert no_temp_files(tmp_path)


async def test_save_twice_raises_the_second_time(relay, client, tmp_path):
    """Saving the same result twice to one folder raises FileExistsError the second time."""
    result = await client.generate("a fox")
    [first] = (await result.save(tmp_path)).paths
    before = first.read_bytes()
    with pytest.raises(FileExistsError):
        await result.save(tmp_path)
    assert first.read_bytes() == before
    assert no_temp_files(tmp_path)


async def test_save_overwrites_when_asked(relay, client, tmp_path):
    """save(overwrite=True) replaces an existing file with the image."""
    result = await client.generate("a fox", response_format="b64_json")
    existing = tmp_path / f"{result.stem}_0.png"
    existing.write_bytes(b"old")
    [path] = (await result.save(tmp_path, overwrite=True)).paths
    assert path == existing
    assert untagged(path) == result.images[0].data


async def test_save_copies_files_already_saved(relay, client, tmp_path):
    """save() of a result already on disk writes a copy into the new folder."""
    result = await client.generate("a fox", save_to=tmp_path / "first")
    [copy] = (await result.save(tmp_path / "second")).paths
    assert copy == tmp_path / "second" / f"{result.stem}_0.png"
    assert copy.read_bytes() == result.paths[0].read_bytes()
    assert len(relay.downloads) == 1


async def test_save_works_after_the_client_is_closed(relay, tmp_path):
    """A url result can still be saved after its client is closed."""
    async with Client(API_KEY, relay.url, clock=FakeClock()) as client:
        result = await client.generate("a fox")
    [path] = (await result.save(tmp_path)).paths
    assert file_png_size(path) == (1024, 1024)


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


# --- save_to: names refused before paying ------------------------------------------------------


async def test_save_to_never_overwrites(relay, client, tmp_path):
    """send(save_to=...) with a file of that name already there raises FileExistsError."""
    request = ImageRequest("a fox", id="cover")
    await client.send(request, save_to=tmp_path)
    first = (tmp_path / "cover_0.png").read_bytes()
    with pytest.raises(FileExistsError):
        await client.send(request, save_to=tmp_path)
    assert (tmp_path / "cover_0.png").read_bytes() == first
    assert no_temp_files(tmp_path)
    await client.send(request, save_to=tmp_path, overwrite=True)


async def test_save_to_creates_the_folder(relay, client, tmp_path):
    """save_to= a folder that does not exist yet creates it."""
    folder = tmp_path / "a" / "b"
    result = await client.generate("a fox", save_to=folder)
    assert result.paths[0].parent == folder


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
    assert untagged(final) == png
    assert listing(folder) == ["poster_0.png"]
    assert relay.generation_count == result.attempts == 1


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
