"""User-space instructions per request, counted by valgrind: a figure load leaves alone.

    python benchmarks/count_instructions.py            # every peer, 200 and 600 requests each
    python benchmarks/count_instructions.py --quick    # each worker once, without valgrind
    python benchmarks/count_instructions.py --bytecodes [--top 30]   # Python bytecodes instead

compare.py's CPU times move 10-30% from one round to the next on a shared 2-core VM; this script
counts what the client's process executes instead. Each peer runs in a fresh process under
`valgrind --tool=callgrind` (not a dependency: `apt-get install valgrind`) against the fake
relay, which runs in its own process, outside valgrind: once with 200 requests and once with 600,
64 in flight. The difference of the two totals, divided by 400, is the instructions one request
costs, start-up (imports, the session, the relay's warm-up) left out. Kernel time (system calls,
fsync) and what the CPU's caches make of it are not counted: read it beside compare.py's CPU
figures, not instead of them.

`--bytecodes` counts the Python bytecodes each request executes instead (`sys.settrace` with
opcode events, in a fresh process per peer: one warm-up run, then 300 requests traced), in all
and by function, and lists the functions where each peer executes the most beyond its
like-for-like peer: where the library's own Python per request goes. No valgrind needed; the
C code a bytecode calls (parsing, base64, hashing) is not counted.

Peers (the same work as compare.py's, in one process each):
  aiohttp_memory      POST, `await resp.json()`, b64decode
  gemimg_send         64 tasks awaiting `client.send(request)`, results in memory
  gemimg_map          `client.map(requests)` with max_concurrency=64, in memory
  aiohttp_crash_safe  aiohttp_memory, then compare.py's crash-safe write in one thread hop
  gemimg_map_save_to  `client.map(requests, save_to=folder)`
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

from bench_memory import API_KEY, PROMPT, fake_relay_process
from compare import MODEL, STYLE, warm, write_crash_safe

HERE = Path(__file__).resolve().parent
IN_FLIGHT = 64
COUNTS = (200, 600)
BYTECODE_REQUESTS = 300
PEERS = ("aiohttp_memory", "gemimg_send", "gemimg_map", "aiohttp_crash_safe", "gemimg_map_save_to")
LIKE_FOR_LIKE = {
    "gemimg_send": "aiohttp_memory",
    "gemimg_map": "aiohttp_memory",
    "gemimg_map_save_to": "aiohttp_crash_safe",
}


async def _drive(requests: int, one: Callable[[int], Awaitable[None]]) -> None:
    numbers = iter(range(requests))

    async def work() -> None:
        for number in numbers:
            await one(number)

    await asyncio.gather(*(work() for _ in range(IN_FLIGHT)))


async def _aiohttp(relay: str, requests: int, out: Path | None) -> None:
    import aiohttp  # noqa: PLC0415 - a worker imports its own peer only

    endpoint = f"{relay}/v1/images/generations"
    body = {"model": MODEL, "prompt": PROMPT, "response_format": "b64_json"}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(number: int) -> None:
            async with http.post(endpoint, json=body, headers=headers) as resp:
                resp.raise_for_status()
                doc = await resp.json()
            data = base64.b64decode(doc["data"][0]["b64_json"])
            if out is not None:
                await asyncio.to_thread(write_crash_safe, out, f"{number:05d}.png", data)

        await _drive(requests, one)


async def _gemimg(relay: str, requests: int, out: Path | None, *, use_map: bool) -> None:
    import gemimg_async as gi  # noqa: PLC0415 - a worker imports its own peer only

    def request(number: int) -> gi.ImageRequest:
        return gi.ImageRequest(PROMPT, model=MODEL, response_format="b64_json", id=f"{number:05d}")

    async with gi.Client(API_KEY, relay, max_concurrency=IN_FLIGHT) as client:
        if not use_map:

            async def one(number: int) -> None:
                await client.send(request(number), save_to=out)

            await _drive(requests, one)
            return
        wanted = (request(number) for number in range(requests))
        async for outcome in client.map(wanted, save_to=out):
            if outcome.error is not None:
                raise outcome.error


def worker(peer: str, relay: str, requests: int) -> None:
    out = Path(tempfile.mkdtemp(prefix="count-")) if peer.endswith(("save_to", "safe")) else None
    try:
        if peer.startswith("aiohttp"):
            asyncio.run(_aiohttp(relay, requests, out))
        else:
            asyncio.run(_gemimg(relay, requests, out, use_map=peer != "gemimg_send"))
        if out is not None and len(list(out.glob("*.png"))) != requests:
            raise RuntimeError(f"{peer} wrote {len(list(out.glob('*.png')))} of {requests} images")
    finally:
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)


def bytecode_worker(peer: str, relay: str, requests: int) -> None:
    """Print {function: bytecodes per request} for `requests` traced after a warm-up run."""
    counts: collections.Counter[str] = collections.Counter()

    def tracer(frame: FrameType, event: str, _: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            where = re.sub(r".*/(site-packages|python3\.\d+)/", "", code.co_filename)
            counts[f"{where.replace(str(HERE.parent) + '/', '')}:{code.co_name}"] += 1
        return tracer

    worker(peer, relay, max(requests // 4, IN_FLIGHT))  # connections and caches made
    sys.settrace(tracer)
    threading.settrace(tracer)
    try:
        worker(peer, relay, requests)
    finally:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]
    print(json.dumps({name: n / requests for name, n in counts.items()}))


def bytecodes(peers: list[str], relay: str, top: int) -> None:
    """Bytecodes per request of each peer, and where each executes the most beyond its
    like-for-like peer's."""
    found: dict[str, dict[str, float]] = {}
    for peer in [*{LIKE_FOR_LIKE.get(peer, peer): None for peer in peers}, *peers]:
        if peer not in found:
            command = [*_command(peer, relay, BYTECODE_REQUESTS), "--bytecodes"]
            done = subprocess.run(command, check=True, cwd=HERE, capture_output=True, text=True)
            found[peer] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{peer}: {sum(found[peer].values()):,.0f} bytecodes per request", flush=True)
    for peer, theirs in LIKE_FOR_LIKE.items():
        if peer in peers:
            ours, base = found[peer], found[theirs]
            more = sum(ours.values()) - sum(base.values())
            print(f"\n{peer}: {more:+,.0f} bytecodes per request beyond {theirs}; the most:")
            excess = {name: ours.get(name, 0.0) - base.get(name, 0.0) for name in {*ours, *base}}
            for name, extra in sorted(excess.items(), key=lambda item: -item[1])[:top]:
                print(f"  {extra:+8.0f}  {name}")


def _command(peer: str, relay: str, requests: int) -> list[str]:
    script = str(Path(__file__).resolve())
    return [sys.executable, script, "--worker", peer, "--relay", relay, "--n", str(requests)]


def count(peer: str, relay: str, requests: int) -> subprocess.Popen[str]:
    """A worker under callgrind; its stderr ends with `Collected : N`."""
    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    return subprocess.Popen(
        [*valgrind, *_command(peer, relay, requests)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE,
    )


def collected(process: subprocess.Popen[str]) -> int:
    _, err = process.communicate()
    found = re.search(r"Collected : (\d+)", err)
    if process.returncode or found is None:
        raise RuntimeError(f"a worker failed: {err.strip().splitlines()[-1:]}")
    return int(found[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="run each worker once, no valgrind")
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    parser.add_argument("--bytecodes", action="store_true", help="count Python bytecodes instead")
    parser.add_argument("--top", type=int, default=25, help="functions listed with --bytecodes")
    parser.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.bytecodes:
            bytecode_worker(args.worker, args.relay, args.n)
        else:
            worker(args.worker, args.relay, args.n)
        return 0
    if args.bytecodes:
        with fake_relay_process(0.0, STYLE) as (relay, _):
            warm(relay)
            bytecodes(args.peers, relay, args.top)
        return 0
    if not args.quick and shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind): nothing to count")
        return 1
    with fake_relay_process(0.0, STYLE) as (relay, _):
        warm(relay)
        if args.quick:
            for peer in args.peers:
                subprocess.run(_command(peer, relay, 10), check=True, cwd=HERE)
                print(f"{peer}: ran 10 requests (no count without valgrind)")
            return 0
        per_request = {}
        for peer in args.peers:  # the two counts at once: two cores
            low, high = (count(peer, relay, n) for n in COUNTS)
            total = collected(high) - collected(low)
            per_request[peer] = total / (COUNTS[1] - COUNTS[0])
            print(f"{peer}: {per_request[peer]:,.0f} instructions per request", flush=True)
    print("\n| peer | instructions per request | vs like-for-like |\n| --- | ---: | ---: |")
    for peer, value in per_request.items():
        theirs = per_request.get(LIKE_FOR_LIKE.get(peer, ""))
        ratio = f"{value / theirs:.2f}x {LIKE_FOR_LIKE[peer]}" if theirs else ""
        print(f"| {peer} | {value:,.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
