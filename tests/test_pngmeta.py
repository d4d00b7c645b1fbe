"""PngTagger: provenance chunks streamed into a PNG right after IHDR, or the bytes left exactly as
they came (C2PA, not a PNG, a head too long); the text chunks read back."""

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemimg_async import Asked, Provenance
from gemimg_async._pngmeta import MAX_HOLD, PngTagger, itxt, parse_text, remove_span, scan_png
from gemimg_async.testing import png
from helpers import PNG_SIGNATURE, jpeg, png_chunks, webp_lossless

PROVENANCE = Provenance(
    prompt="一只在雪中的红狐狸 <b>&</b>",
    model="gemini-3-pro-image-preview",
    job_id="fox",
    request_id="req_1",
    idempotency_key="key-1",
    created="2026-11-27T14:05:09Z",
    software="gemimg-async 0.1.0",
)


def chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk with its CRC, written by hand."""
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def rebuild(base: bytes, *, before: list[bytes] = (), after: list[bytes] = ()) -> bytes:
    """`base` with `before` chunks between IHDR and IDAT and `after` chunks before IEND."""
    parts = [chunk(kind, data) for kind, data in png_chunks(base)]
    return b"".join((PNG_SIGNATURE, parts[0], *before, *parts[1:-1], *after, parts[-1]))


C2PA = chunk(b"caBX", b"jumb" + b"c2pa" + bytes(200))
PLAIN = rebuild(png(40, 30), before=[chunk(b"gAMA", struct.pack(">I", 45455))])
SIGNED = rebuild(png(40, 30), before=[chunk(b"gAMA", bytes(4)), C2PA])
SIGNED_LATE = rebuild(png(40, 30), after=[C2PA])


def tag(data: bytes, pieces: list[int] | None = None, **kwargs) -> tuple[bytes, PngTagger]:
    """Feed `data` to a tagger in pieces of the given sizes (the rest in one), then close."""
    tagger = PngTagger(PROVENANCE, **kwargs)
    out, pos = [], 0
    for size in pieces or []:
        out.append(tagger.feed(data[pos : pos + size]))
        pos += size
    out += [tagger.feed(data[pos:]), tagger.close()]
    return b"".join(out), tagger


def splits(data: bytes):
    """Piece sizes that cover any prefix of `data`, including empty pieces."""
    return st.lists(st.integers(0, len(data)), max_size=12)


def test_chunks_go_right_after_ihdr_and_the_pixels_are_untouched():
    """IHDR, then one iTXt per field, then the PNG's own chunks; every CRC holds."""
    out, tagger = tag(PLAIN)
    kinds = [kind for kind, _ in png_chunks(out)]
    fields = PROVENANCE.with_size(40, 30).to_fields()
    assert kinds == [b"IHDR", *[b"iTXt"] * len(fields), b"gAMA", b"IDAT", b"IEND"]
    assert [k for k, _ in png_chunks(PLAIN)] == [b"IHDR", b"gAMA", b"IDAT", b"IEND"]
    assert dict(png_chunks(out))[b"IDAT"] == dict(png_chunks(PLAIN))[b"IDAT"]
    assert tagger.needs_sidecar is False
    offset, length = tagger.inserted
    assert out[:offset] + out[offset + length :] == PLAIN


def test_the_delivered_size_comes_from_ihdr_judged_against_the_ask():
    """The tagger reads the pixel size from IHDR and writes it judged against what was asked."""
    out, tagger = tag(PLAIN, asked=Asked("4K", "4:3"))
    texts = dict(parse_text(kind, data) for kind, data in png_chunks(out) if kind == b"iTXt")
    assert texts["Size Delivered"] == "40x30 (1K, smaller)"
    assert (tagger.width, tagger.height) == (40, 30)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_chunking_gives_the_same_bytes(data):
    """However the stream is split, the output is the same as when fed whole."""
    for source in (PLAIN, SIGNED, SIGNED_LATE, jpeg(), webp_lossless(), PLAIN[:20], b""):
        pieces = data.draw(splits(source))
        assert tag(source, pieces)[0] == tag(source)[0]


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_png_with_a_c2pa_manifest_comes_out_byte_identical(data):
    """A caBX chunk before the image data: nothing is inserted, and a sidecar is called for."""
    out, tagger = tag(SIGNED, data.draw(splits(SIGNED)))
    assert out == SIGNED
    assert tagger.needs_sidecar is True
    assert "C2PA" in tagger.why
    assert tagger.inserted is None


@pytest.mark.parametrize("image", [jpeg(), webp_lossless(), b"GIF89a" + bytes(20)], ids=str)
def test_other_images_pass_unchanged_and_ask_for_a_sidecar(image):
    """JPEG, WEBP and GIF bytes pass as they came; the provenance goes to a sidecar."""
    out, tagger = tag(image, [3])
    assert out == image
    assert tagger.needs_sidecar is True
    assert tagger.why == "not a PNG"


def test_a_stream_cut_before_the_image_data_passes_unchanged():
    """A PNG that ends before IDAT is given back whole on close (the sink rejects it)."""
    tagger = PngTagger(PROVENANCE)
    assert tagger.feed(PLAIN[:40]) == b""
    assert tagger.needs_sidecar is None
    assert tagger.close() == PLAIN[:40]
    assert tagger.needs_sidecar is True


def test_the_head_held_back_is_bounded():
    """A head longer than max_hold before IDAT: the tagger gives up and passes it unchanged,
    having held at most max_hold plus one piece."""
    big = rebuild(png(), before=[chunk(b"zzZz", bytes(3 * MAX_HOLD))])
    tagger = PngTagger(PROVENANCE)
    out, held = [], 0
    for start in range(0, len(big), 64 * 1024):
        out.append(tagger.feed(big[start : start + 64 * 1024]))
        held = max(held, len(tagger._held))
    out.append(tagger.close())
    assert b"".join(out) == big
    assert tagger.needs_sidecar is True
    assert "before the PNG's image data" in tagger.why
    assert held <= MAX_HOLD + 64 * 1024


def test_after_deciding_each_piece_is_handed_back_without_a_copy():
    """Once the chunks are in, `feed` returns the very object it was given."""
    tagger = PngTagger(PROVENANCE)
    tagger.feed(PLAIN[:-12])
    piece = PLAIN[-12:]
    assert tagger.feed(piece) is piece


def test_a_late_c2pa_chunk_taints_and_remove_span_restores_the_original(tmp_path):
    """caBX after IDAT is seen too late: `tainted`, and cutting the inserted span out of the
    written file gives back the relay's bytes exactly."""
    out, tagger = tag(SIGNED_LATE, [50, 7])
    assert tagger.tainted
    path = tmp_path / "late.png"
    path.write_bytes(out)
    fd = os.open(path, os.O_RDWR)
    try:
        remove_span(fd, *tagger.inserted, block=17)
    finally:
        os.close(fd)
    assert path.read_bytes() == SIGNED_LATE


def test_a_plain_png_is_not_tainted():
    """Watching chunk boundaries through the image data finds no caBX where there is none."""
    assert not tag(PLAIN, [1] * 60)[1].tainted


def test_itxt_holds_utf8_text_and_a_valid_crc():
    """An iTXt chunk round-trips any text; NULs become U+FFFD; bad keywords are refused."""
    raw = itxt("Description", "狐狸\x00 é")
    [(kind, data)] = png_chunks(PNG_SIGNATURE + raw)
    assert parse_text(kind, data) == ("Description", "狐狸\ufffd é")
    for keyword in ("", "x" * 80, "tab\there"):
        with pytest.raises(ValueError):
            itxt(keyword, "text")


def test_parse_text_reads_text_and_compressed_chunks():
    """tEXt (Latin-1), zTXt and compressed iTXt are read; malformed ones give None."""
    assert parse_text(b"tEXt", b"Title\x00caf\xe9") == ("Title", "café")
    assert parse_text(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"long")) == ("Comment", "long")
    squeezed = b"Key\x00\x01\x00en\x00Schluessel\x00" + zlib.compress("ü".encode())
    assert parse_text(b"iTXt", squeezed) == ("Key", "ü")
    assert parse_text(b"iTXt", b"no separator") is None
    assert parse_text(b"zTXt", b"Key\x00\x00not zlib") is None


def test_scan_png_finds_fields_and_c2pa(tmp_path):
    """A file's text fields and its caBX chunk, wherever it is, are found."""
    tagged, _ = tag(PLAIN)
    for name, data, c2pa in (("a", tagged, False), ("b", SIGNED, True), ("c", SIGNED_LATE, True)):
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        fields, found = scan_png(path)
        assert found is c2pa
        assert (fields.get("Description") == PROVENANCE.prompt) is (name == "a")


def test_the_tagging_benchmark_runs():
    """`bench_pngmeta.py --quick` finishes and reports both layouts, adding the same bytes."""
    script = Path(__file__).parent.parent / "benchmarks" / "bench_pngmeta.py"
    done = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, check=True
    )
    assert done.stdout.count("PngTagger:") == 2
    assert "peak memory allocated while tagging" in done.stdout
