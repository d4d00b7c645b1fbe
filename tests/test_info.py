"""read_info: what a saved image says of itself, from its PNG text chunks or its JSON sidecar;
sidecars written atomically, never through a symlink."""

import json
import struct

import pytest

from gemimg_async import read_info
from gemimg_async._info import sidecar_path, write_sidecar
from gemimg_async._pngmeta import PngTagger
from gemimg_async.testing import png
from helpers import jpeg, no_temp_files, webp_lossless
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
