"""read_info: what a saved image says of itself, from its PNG text chunks or its JSON sidecar;
sidecars written atomically, never through a symlink."""

import json
import struct
from pathlib import Path

import pytest

from gemimg_async import Client, ImageRequest, read_info
from gemimg_async._info import sidecar_path, write_sidecar
from gemimg_async._pngmeta import PngTagger
from gemimg_async.testing import FakeClock, FakeRelay, png
from gemimg_async.testing._images import with_c2pa
from helpers import (
    API_KEY,
    FORMATS,
    jpeg,
    listing,
    no_temp_files,
    png_chunks,
    reference,
    untagged,
    webp_lossless,
)
from hostile.servers import Reply, ScriptedRelay, b64_answer
from hostile.support import run_cli
from test_pngmeta import PLAIN, PROVENANCE, SIGNED, chunk, rebuild


def streamed(data: bytes) -> tuple[bytes, PngTagger]:
    tagger = PngTagger(PROVENANCE)
    out = b"".join(tagger.feed(data[i : i + 7]) for i in range(0, len(data), 7))
    return out + tagger.close(), tagger


def save(folder, name, data):
    """Save `data` as a sink would: tagged in passing, or unchanged with a sidecar."""
    out, tagger = streamed(data)
    path = folder / name
    path.write_bytes(out)
    if tagger.needs_sidecar:
        write_sidecar(path, PROVENANCE.with_size(tagger.width or 0, tagger.height or 0))
    return path, out


def test_a_tagged_png_round_trips_through_read_info(folder):
    """Provenance written into a PNG's iTXt chunks is read back whole, with no sidecar."""
    path, _ = save(folder, "fox_0.png", PLAIN)
    info = read_info(path)
    assert info.provenance == PROVENANCE.with_size(40, 30)
    assert (info.media_type, info.width, info.height) == ("image/png", 40, 30)
    assert info.sidecar is None
    assert not info.c2pa
    assert not sidecar_path(path).exists()
    assert "  Description: 一只在雪中的红狐狸 <b>&</b>" in info.lines()


def test_a_png_with_c2pa_stays_identical_and_gets_a_sidecar(folder):
    """A caBX-carrying PNG is saved byte for byte; its provenance is in `{name}.json`."""
    path, out = save(folder, "signed_0.png", SIGNED)
    assert out == SIGNED
    assert path.read_bytes() == SIGNED
    info = read_info(path)
    assert info.c2pa
    assert info.sidecar == folder / "signed_0.png.json"
    assert info.provenance == PROVENANCE.with_size(40, 30)
    assert any("C2PA manifest: yes" in line for line in info.lines())


@pytest.mark.parametrize(
    ("name", "data", "media_type"),
    [("a_0.jpg", jpeg(4, 3), "image/jpeg"), ("a_0.webp", webp_lossless(5, 6), "image/webp")],
)
def test_jpeg_and_webp_round_trip_through_their_sidecar(folder, name, data, media_type):
    """JPEG and WEBP are kept as sent; read_info gives the sidecar's provenance."""
    path, out = save(folder, name, data)
    assert out == data
    info = read_info(path)
    assert info.media_type == media_type
    assert info.provenance == PROVENANCE.with_size(0, 0)
    doc = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    assert doc["image"] == name
    assert doc["prompt"] == PROVENANCE.prompt
    assert no_temp_files(folder)


def test_c2pa_is_seen_in_jpeg_and_webp(folder):
    """An APP11 JUMBF segment naming c2pa (JPEG) and a C2PA chunk (WEBP) are recognised."""
    box = b"JP\x00\x01" + b"jumb" + b"c2pa" + bytes(8)
    app11 = b"\xff\xeb" + struct.pack(">H", 2 + len(box)) + box
    plain = jpeg()
    (folder / "s.jpg").write_bytes(plain[:2] + app11 + plain[2:])
    (folder / "p.jpg").write_bytes(plain)
    webp = webp_lossless()
    extra = b"C2PA" + struct.pack("<I", 3) + b"abc\x00"
    (folder / "s.webp").write_bytes(
        webp[:4] + struct.pack("<I", len(webp) - 8 + len(extra)) + webp[8:] + extra
    )
    assert read_info(folder / "s.jpg").c2pa
    assert not read_info(folder / "p.jpg").c2pa
    assert read_info(folder / "s.webp").c2pa
    (folder / "plain.png").write_bytes(png())
    assert not read_info(folder / "plain.png").c2pa


def test_an_image_without_provenance_says_so(folder):
    """A PNG with other software's text and no fields of ours: shown, and no provenance."""
    path = folder / "other.png"
    path.write_bytes(rebuild(png(), before=[chunk(b"tEXt", b"Author\x00someone")]))
    info = read_info(path)
    assert info.provenance is None
    assert info.fields == {"Author": "someone"}
    assert info.lines()[-2:] == ["  Author: someone", "  no provenance recorded"]


def test_a_sidecar_replaces_a_symlink_without_writing_through_it(folder, tmp_path):
    """A symlink at the sidecar's name is replaced; its target is left as it was."""
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me")
    image = folder / "x_0.jpg"
    image.write_bytes(jpeg())
    sidecar_path(image).symlink_to(target)
    write_sidecar(image, PROVENANCE)
    assert target.read_text() == "keep me"
    assert not sidecar_path(image).is_symlink()
    assert read_info(image).provenance == PROVENANCE


def test_a_broken_sidecar_is_a_clear_error(folder):
    """A sidecar that is not JSON of provenance raises ValueError naming it."""
    image = folder / "x_0.jpg"
    image.write_bytes(jpeg())
    sidecar_path(image).write_text("[1, 2")
    with pytest.raises(ValueError, match=r"x_0\.jpg\.json: not a sidecar"):
        read_info(image)
    sidecar_path(image).write_text('{"prompt": 3}')
    with pytest.raises(ValueError, match="not a sidecar"):
        read_info(image)


def test_a_file_that_is_no_image_is_described(folder):
    """read_info on other bytes: no type, no size, no provenance."""
    path = folder / "notes.txt"
    path.write_text("hello")
    info = read_info(path)
    assert (info.media_type, info.provenance, info.c2pa) == (None, None, False)
    assert info.lines()[0].endswith("not an image, unknown size")


# --- end to end: saved by the client, read back by `gemimg-async info` -------------------------


async def info_lines(*paths: Path) -> list[str]:
    """`gemimg-async info PATHS` in a subprocess: its output lines (it must exit 0)."""
    done = await run_cli("info", *map(str, paths), cwd=paths[0].parent)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode("utf-8").splitlines()


def said(lines: list[str]) -> dict[str, str]:
    """The `  Keyword: value` lines of `info`'s output."""
    return dict(line.strip().split(": ", 1) for line in lines[1:] if line.startswith("  "))


@pytest.mark.anyio
@pytest.mark.parametrize("response_format", FORMATS)
async def test_a_png_saved_by_the_client_says_where_it_came_from(relay, folder, response_format):
    """A PNG saved from the fake relay carries the prompt, model, sizes, job and request ids,
    key, time and version in iTXt chunks (no sidecar); the pixels and every other chunk are
    the relay's; `gemimg-async info` prints them."""
    prompt = "一只在雪中的红狐狸, 16:9"
    (served,) = await reference(relay, prompt, size="16:9")
    request = ImageRequest(prompt, id="fox", size="16:9", response_format=response_format)
    async with Client(API_KEY, relay.url, clock=FakeClock()) as client:
        result = await client.send(request, save_to=folder)
    (path,) = result.paths
    assert untagged(path) == served != path.read_bytes()
    assert result.images[0].byte_size == path.stat().st_size
    assert not sidecar_path(path).exists()
    lines = await info_lines(path)
    assert lines[0] == f"{path}: image/png, 1376x768"
    fields = said(lines)
    assert fields["Description"] == prompt
    assert fields["Model"] == "gemini-3-pro-image-preview"
    assert fields["Size Asked"] == "1K 16:9 (1376x768)"
    assert fields["Size Delivered"] == "1376x768 (1K)"
    assert fields["Job Id"] == "fox"
    assert fields["Request Id"] == result.request_id
    assert fields["Idempotency Key"] == result.idempotency_key
    assert fields["Creation Time"] == "2023-11-14T22:30:00Z"  # the FakeClock's
    assert fields["Software"].startswith("gemimg-async")


@pytest.mark.anyio
@pytest.mark.parametrize("response_format", FORMATS)
async def test_a_c2pa_carrying_png_is_byte_identical_to_what_the_relay_sent(
    folder, response_format
):
    """Google marks its images with a C2PA manifest (caBX): such a PNG is saved exactly as the
    relay sent it, inline or downloaded, and its provenance goes to a sidecar `info` reads."""
    async with FakeRelay(api_keys=API_KEY, c2pa=True) as relay:
        (served,) = await reference(relay, "a signed fox")
        assert any(kind == b"caBX" for kind, _ in png_chunks(served))
        request = ImageRequest("a signed fox", id="signed", response_format=response_format)
        async with Client(API_KEY, relay.url, clock=FakeClock()) as client:
            result = await client.send(request, save_to=folder)
    (path,) = result.paths
    assert path.read_bytes() == served
    assert result.images[0].byte_size == len(served)
    assert sidecar_path(path).is_file()
    lines = await info_lines(path)
    assert "  C2PA manifest: yes (the file is kept as the relay sent it)" in lines
    assert "  sidecar: signed_0.png.json" in lines
    fields = said(lines)
    assert (fields["Description"], fields["Job Id"]) == ("a signed fox", "signed")
    assert fields["Request Id"] == result.request_id
    assert fields["Size Delivered"] == "1024x1024 (1K)"
    assert no_temp_files(folder)


def late_c2pa_relay() -> ScriptedRelay:
    return ScriptedRelay(files={"late.png": LATE}, default=Reply(body=b64_answer(LATE)))


LATE = with_c2pa(png(12, 8), after_data=True)
"""A PNG whose caBX comes after its image data: found only once the chunks are in."""


@pytest.mark.anyio
@pytest.mark.parametrize("response_format", FORMATS)
async def test_a_c2pa_chunk_after_the_image_data_leaves_the_file_as_sent(folder, response_format):
    """A caBX found after the provenance chunks were written: they are taken out of the file
    again before it is placed, so it is byte-identical to the relay's, with a sidecar."""
    async with late_c2pa_relay() as relay:
        if response_format == "url":
            url = relay.file_url("late.png")
            relay.default = Reply(body=json.dumps({"data": [{"url": url}]}).encode())
        async with Client(API_KEY, relay.url, clock=FakeClock()) as client:
            result = await client.generate("late", save_to=folder, response_format=response_format)
    (path,) = result.paths
    assert path.read_bytes() == LATE
    assert result.images[0].byte_size == len(LATE)
    info = read_info(path)
    assert info.c2pa
    assert info.sidecar == sidecar_path(path)
    assert info.provenance is not None
    assert (info.provenance.delivered or "").startswith("12x8 ")
    assert info.provenance.prompt == "late"


@pytest.mark.anyio
@pytest.mark.parametrize("response_format", FORMATS)
@pytest.mark.parametrize(
    ("data", "extension", "size"),
    [(jpeg(40, 30), "jpg", "40x30"), (webp_lossless(50, 60), "webp", "50x60")],
    ids=["jpeg", "webp"],
)
async def test_jpeg_and_webp_from_a_relay_round_trip_through_info(
    folder, response_format, data, extension, size
):
    """A relay that answers JPEG or WEBP: the file is its bytes exactly, the provenance is in
    the sidecar, and `gemimg-async info` prints it."""
    async with ScriptedRelay(
        files={f"a.{extension}": data}, default=Reply(body=b64_answer(data))
    ) as relay:
        if response_format == "url":
            url = relay.file_url(f"a.{extension}")
            relay.default = Reply(body=json.dumps({"data": [{"url": url}]}).encode())
        async with Client(API_KEY, relay.url, clock=FakeClock()) as client:
            request = ImageRequest("a cat", id="cat", response_format=response_format)
            result = await client.send(request, save_to=folder)
    (path,) = result.paths
    assert path.name == f"cat_0.{extension}"
    assert path.read_bytes() == data
    lines = await info_lines(path)
    assert f"  sidecar: cat_0.{extension}.json" in lines
    fields = said(lines)
    assert (fields["Description"], fields["Job Id"]) == ("a cat", "cat")
    assert fields["Size Delivered"].startswith(f"{size} (")
    assert fields["Request Id"] == result.request_id


@pytest.mark.anyio
async def test_metadata_false_keeps_the_relays_bytes(relay, folder):
    """Client(metadata=False): the file is the relay's PNG exactly, with no sidecar."""
    (served,) = await reference(relay, "a plain fox")
    async with Client(API_KEY, relay.url, clock=FakeClock(), metadata=False) as client:
        result = await client.generate("a plain fox", save_to=folder, response_format="b64_json")
        saved = await (await client.generate("a plain fox")).save(folder)
    assert [path.read_bytes() for path in (*result.paths, *saved.paths)] == [served, served]
    assert read_info(result.paths[0]).provenance is None
    assert listing(folder) == sorted(path.name for path in (*result.paths, *saved.paths))


@pytest.mark.anyio
async def test_an_image_kept_in_memory_is_tagged_when_saved(relay, client, folder):
    """Without save_to the bytes are the relay's; result.save() writes them with provenance."""
    (served,) = await reference(relay, "a heron")
    result = await client.generate("a heron", response_format="b64_json")
    assert result.images[0].data == served
    (path,) = (await result.save(folder)).paths
    assert untagged(path) == served
    info = read_info(path)
    assert info.provenance is not None
    assert info.provenance.request_id == result.request_id
    assert info.provenance.idempotency_key == result.idempotency_key


@pytest.mark.anyio
async def test_a_stale_sidecar_goes_when_a_tagged_image_replaces_its_file(relay, client, folder):
    """An image saved over an older one that had a sidecar: the sidecar, which would speak for
    the old image, is removed; the new file's own chunks speak for it."""
    stale = folder / "poster_0.png.json"
    stale.write_text(json.dumps({"image": "poster_0.png", "prompt": "an old poster"}))
    request = ImageRequest("a new poster", id="poster")
    result = await client.send(request, save_to=folder, overwrite=True)
    assert not stale.exists()
    info = read_info(result.paths[0])
    assert info.provenance is not None
    assert info.provenance.prompt == "a new poster"


@pytest.mark.anyio
async def test_info_says_which_files_it_cannot_read(folder):
    """`gemimg-async info` on a missing file: one line naming it on stderr, exit 2; the files
    it can read are still printed."""
    path, _ = save(folder, "fox_0.png", PLAIN)
    done = await run_cli("info", str(path), str(folder / "missing.png"), cwd=folder)
    assert done.returncode == 2
    assert done.stdout.decode().startswith(f"{path}: image/png, 40x30")
    assert done.stderr.decode().strip() == (
        f"gemimg-async: {folder / 'missing.png'}: No such file or directory"
    )
