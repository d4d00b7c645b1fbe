"""What tagging a streamed PNG costs: throughput, the longest single `feed`, and peak extra memory.

A ~30 MB PNG of incompressible pixels (a 4K answer's size) is fed to `PngTagger` in 64 KiB pieces,
the size the transport reads, and compared with a loop that only hands the pieces on: once with
its image data in one IDAT chunk, once split into 8 KiB IDAT chunks as libpng writes them (the
tagger follows every chunk boundary, watching for a late caBX).

    .venv/bin/python benchmarks/bench_pngmeta.py [--quick]
"""

import argparse
import statistics
import struct
import time
import tracemalloc
import zlib

from gemimg_async import Provenance
from gemimg_async._pngmeta import PngTagger
from gemimg_async.testing import _images

PIECE = 64 * 1024
PROVENANCE = Provenance(
    prompt="一只在雪中的红狐狸, 4K, " * 20,
    model="gemini-3-pro-image-preview-4k",
    asked="4K 1:1 (4096x4096)",
    job_id="fox",
    request_id="req_0123456789abcdef",
    idempotency_key="0f8fad5b-d9cb-469f-a165-70867728950e",
    created="2026-11-27T14:05:09Z",
    software="gemimg-async 0.1.0",
)


def split_idat(data: bytes, size: int = 8192) -> bytes:
    """The same PNG with its one IDAT chunk cut into chunks of `size` bytes."""
    (length,) = struct.unpack(">I", data[33:37])
    assert data[37:41] == b"IDAT"
    idat = data[41 : 41 + length]
    chunks = [
        struct.pack(">I", len(part))
        + b"IDAT"
        + part
        + struct.pack(">I", zlib.crc32(b"IDAT" + part))
        for part in (idat[i : i + size] for i in range(0, len(idat), size))
    ]
    return data[:33] + b"".join(chunks) + data[45 + length :]


def pieces(data: bytes) -> list[bytes]:
    return [data[i : i + PIECE] for i in range(0, len(data), PIECE)]


def run(chunks: list[bytes], *, tag: bool) -> tuple[float, float, int]:
    """Seconds for the whole stream, the longest feed, and bytes out."""
    tagger = PngTagger(PROVENANCE)
    out = longest = 0
    began = time.perf_counter()
    for chunk in chunks:
        start = time.perf_counter()
        written = tagger.feed(chunk) if tag else chunk
        longest = max(longest, time.perf_counter() - start)
        out += len(written)
    out += len(tagger.close()) if tag else 0
    return time.perf_counter() - began, longest, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1 MB image, one round")
    args = parser.parse_args()
    side = 600 if args.quick else 3200
    rounds = 1 if args.quick else 7
    whole = _images._noise_png(side, side)  # noqa: SLF001 - the relay's incompressible PNG
    for name, data in (("one IDAT", whole), ("8 KiB IDATs", split_idat(whole))):
        chunks = pieces(data)
        mb = len(data) / 1e6
        print(f"{side}x{side} PNG, {name}: {mb:.1f} MB in {len(chunks)} pieces of 64 KiB")
        for label, tag in (("hand on only", False), ("PngTagger", True)):
            runs = [run(chunks, tag=tag) for _ in range(rounds)]
            best = min(seconds for seconds, _, _ in runs)
            longest = max(feed for _, feed, _ in runs)
            print(
                f"  {label:>12}: {mb / best:8.0f} MB/s (best of {rounds}; median "
                f"{mb / statistics.median(s for s, _, _ in runs):.0f}), longest feed "
                f"{longest * 1e6:.0f} us, {runs[0][2] - len(data):+d} bytes"
            )
        tracemalloc.start()
        run(chunks, tag=True)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  peak memory allocated while tagging (beyond the input): {peak / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
