"""What an image's base64 costs the client, with each codec `gemimg_async._base64` can use.

Strict decoding (what every `b64_json` answer's image goes through: a small answer's in one
call, a streamed one's in 64 KiB pieces) and encoding (an input image's data: URI), for a tiny
image (a 30 KB answer's, as compare.py's throughput workload) and a 4K one (48 MB of pixels,
64 MB of base64): the standard library's `binascii` and, when installed, pybase64 (the
`speedups` extra). CPU time on this thread (`time.thread_time`), best and median of the rounds.

    .venv/bin/python benchmarks/bench_base64.py [--quick]
"""

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable

from gemimg_async import _base64

PIECE = 64 * 1024
SIZES = {"tiny (22.9 KB)": 22_935, "4K (48 MB)": 48_000_000}
"""Image sizes: compare.py's tiny PNG and bench_memory.py's 4K noise PNG."""


Codec = Callable[[bytes], bytes]


def codecs() -> dict[str, tuple[Codec, Codec]]:
    found = {"binascii": (_base64._stdlib_decode, _base64._stdlib_encode)}  # noqa: SLF001
    try:
        import pybase64  # noqa: PLC0415
    except ImportError:
        print("pybase64 is not installed (pip install 'gemimg_async[speedups]'): binascii only")
    else:
        found["pybase64"] = (
            lambda text: pybase64.b64decode(text, validate=True),
            pybase64.b64encode,
        )
    return found


def _each(decode: Codec, _: Codec, texts: list[bytes], repeat: int) -> list[bytes]:
    return [decode(text) for _ in range(repeat) for text in texts]


def _encode_each(_: Codec, encode: Codec, images: list[bytes], repeat: int) -> list[bytes]:
    return [encode(image) for _ in range(repeat) for image in images]


def timed(work: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Best and median CPU seconds of `rounds` runs of `work`."""
    spent = []
    for _ in range(rounds):
        began = time.thread_time()
        work()
        spent.append(time.thread_time() - began)
    return min(spent), statistics.median(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1 MB image instead of 48 MB")
    args = parser.parse_args()
    sizes = {"tiny (22.9 KB)": 22_935, "1 MB": 1_000_000} if args.quick else SIZES
    print(f"gemimg_async uses {_base64.CODEC}\n")
    print("| image | codec | decode, whole | decode, 64 KiB pieces | encode |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label, size in sizes.items():
        data = os.urandom(size)
        text = _base64._stdlib_encode(data)  # noqa: SLF001
        pieces = [text[i : i + PIECE] for i in range(0, len(text), PIECE)]
        repeat = 200 if size < PIECE else 1
        rounds = 3 if args.quick or size > PIECE else 9
        for name, (decode, encode) in codecs().items():
            if decode(text) != data or encode(data) != text:
                raise SystemExit(f"{name} does not give back the image")
            cells = []
            for work, arg in ((_each, [text]), (_each, pieces), (_encode_each, [data])):
                best, median = timed(functools.partial(work, decode, encode, arg, repeat), rounds)
                cells.append(f"{best / repeat * 1e3:.3f} ms ({median / repeat * 1e3:.3f})")
            print(f"| {label} | {name} | {' | '.join(cells)} |")
    print("\n(each cell: CPU ms per image, best of the rounds (their median))")


if __name__ == "__main__":
    main()
