"""Memory and event-loop stalls of `client.stream()` handing a 4K image on to a slow consumer.

    python benchmarks/bench_stream.py            # 4K 16:9, b64_json and url (a minute or two)
    python benchmarks/bench_stream.py --quick    # a smoke run (the standard model)

What a web backend does with `async with client.stream(...) as image: async for chunk in image`:
hand each chunk on to its caller (`StreamingResponse`), who reads slower than the relay sends.
The fake relay runs in its own process with incompressible "noise" PNGs (a 4K 16:9 image is
about 28 MB, 37 MB of base64). Each format is measured in a fresh worker process that imports
gemimg_async, streams a small warm-up image (imports, sessions and code paths paid for), resets
its peak RSS (`/proc/self/clear_refs`), then streams the 4K image through a one-chunk queue to a
consumer that sleeps after every chunk. The worker reports how far its peak RSS (VmHWM) rose
over the RSS it had at the reset, the event loop's longest stall, and whether the bytes handed
on are the relay's PNG. The goal: under 5 MB extra RSS for a 4K `b64_json` image.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from _loopstall import StallProbe
from bench_memory import fake_relay

API_KEY = "sk-test"
PROMPT = "a lighthouse on a cliff at dusk, long exposure, waves breaking on the rocks"
MODELS = {"standard": "gemini-3-pro-image-preview", "4k": "gemini-3-pro-image-preview-4k"}
FORMATS = ("b64_json", "url")
GOAL_MB = 5.0
MB = 1024 * 1024


def _status_bytes(name: str) -> int:
    text = Path("/proc/self/status").read_text()
    found = re.search(rf"^{name}:\s+(\d+) kB", text, re.MULTILINE)
    assert found is not None, name
    return int(found[1]) * 1024


async def _stream(args: argparse.Namespace) -> dict[str, Any]:
    import gemimg_async as gi  # noqa: PLC0415 - the worker's only import of the library

    async with gi.Client(API_KEY, args.relay, retry=gi.RetryPolicy.never()) as client:
        async with client.stream("warm-up", response_format=args.format) as warm:
            async for _ in warm:
                pass
        Path("/proc/self/clear_refs").write_text("5")  # noqa: ASYNC240 - the peak starts again
        baseline = _status_bytes("VmHWM")
        digest, handed_on = hashlib.sha256(), 0
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)

        async def slow_consumer() -> None:
            nonlocal handed_on
            while (chunk := await queue.get()) is not None:
                digest.update(chunk)
                handed_on += len(chunk)
                await asyncio.sleep(args.consumer_delay)  # a caller on a slow link

        async with StallProbe() as probe:
            started = time.perf_counter()
            consumer = asyncio.create_task(slow_consumer())
            async with client.stream(
                PROMPT, model=args.model, size=args.size, response_format=args.format
            ) as image:
                ready = time.perf_counter() - started
                media_type = image.media_type
                async for chunk in image:
                    await queue.put(chunk)
            await queue.put(None)
            await consumer
            wall = time.perf_counter() - started
        peak = _status_bytes("VmHWM")
    return {
        "format": args.format,
        "bytes": handed_on,
        "media_type": media_type,
        "sha256": digest.hexdigest(),
        "extra_rss_bytes": peak - baseline,
        "worst_stall_ms": probe.worst * 1000,
        "worst_stall_own_ms": probe.worst_own * 1000,
        "ready_s": ready,
        "wall_s": wall,
    }


def worker(args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(_stream(args))), flush=True)
    return 0


def warm(args: argparse.Namespace) -> int:
    """Ask the relay for the image once (it renders and caches it); print its PNG's sha256."""
    body = {"model": args.model, "prompt": PROMPT, "size": args.size, "response_format": "b64_json"}
    request = urllib.request.Request(
        f"{args.relay}/v1/images/generations",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=900) as answer:
        png = base64.b64decode(json.loads(answer.read())["data"][0]["b64_json"])
    print(json.dumps({"sha256": hashlib.sha256(png).hexdigest(), "bytes": len(png)}), flush=True)
    return 0


def _run(*options: str, timeout: float) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), *options]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{' '.join(options[:1])} failed:\n{done.stderr[-3000:]}")
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the standard model: a smoke run")
    parser.add_argument("--size", default="16:9")
    parser.add_argument("--consumer-delay", type=float, default=0.005, help="seconds per chunk")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    hidden = argparse.SUPPRESS
    parser.add_argument("--worker", action="store_true", help=hidden)
    parser.add_argument("--warm", action="store_true", help=hidden)
    parser.add_argument("--relay", help=hidden)
    parser.add_argument("--model", help=hidden)
    parser.add_argument("--format", choices=FORMATS, help=hidden)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.warm:
        return warm(args)
    if not Path("/proc/self/clear_refs").exists():
        print("needs Linux: the peak RSS is read from /proc/self/status", file=sys.stderr)
        return 2

    model = MODELS["standard" if args.quick else "4k"]
    common = ["--relay", "", "--model", model, "--size", args.size]
    with fake_relay(0.0, "noise") as relay:
        common[1] = relay
        expected = _run("--warm", *common, timeout=args.timeout)
        records = []
        for response_format in FORMATS:
            options = ["--worker", *common, "--format", response_format]
            options += ["--consumer-delay", str(args.consumer_delay)]
            records.append(_run(*options, timeout=args.timeout))
    print(f"client.stream() of one {model} {args.size} image ({expected['bytes'] / MB:.1f} MB")
    print(f"PNG) to a consumer sleeping {args.consumer_delay * 1000:g} ms per chunk:\n")
    header = "| format | extra RSS MB | worst stall ms | excl. CPU wait ms | ready s | wall s |"
    print(f"{header} correct |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for record in records:
        correct = record["sha256"] == expected["sha256"] and record["media_type"] == "image/png"
        print(
            f"| {record['format']} | {record['extra_rss_bytes'] / MB:.1f} "
            f"| {record['worst_stall_ms']:.1f} | {record['worst_stall_own_ms']:.1f} "
            f"| {record['ready_s']:.2f} | {record['wall_s']:.2f} | {'yes' if correct else 'no'} |"
        )
    b64 = next(record for record in records if record["format"] == "b64_json")
    met = b64["extra_rss_bytes"] / MB < GOAL_MB
    print(f"\ngoal, under {GOAL_MB:g} MB extra RSS for b64_json: {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
