"""User-space instructions per request, counted by valgrind: a figure load leaves alone.

    python benchmarks/count_instructions.py            # every peer, 200 and 600 requests each
    python benchmarks/count_instructions.py --quick    # each worker once, without valgrind
    python benchmarks/count_instructions.py --caches   # cache misses, mispredicted branches too
    python benchmarks/count_instructions.py --bytecodes [--top 30]   # Python bytecodes instead

compare.py's CPU times move 10-30% from one round to the next on a shared 2-core VM; this script
counts what the client's process executes instead. Each peer runs in a fresh process under
`valgrind --tool=callgrind` (not a dependency: `apt-get install valgrind`) against the fake
relay, which runs in its own process, outside valgrind: once with 200 requests and once with 600,
64 in flight. The difference of the two totals, divided by 400, is the instructions one request
costs, start-up (imports, the session, the relay's warm-up) left out. Kernel time (system calls,
fsync) and what the CPU's caches make of it are not counted: read it beside compare.py's CPU
figures, not instead of them. `--caches` adds valgrind's simulated first-level caches and branch
predictor (about twice as slow): instruction and data cache misses and mispredicted branches per
request, where an interpreted bytecode costs more than its instructions say.

`--bytecodes` counts the Python bytecodes each request executes instead (`sys.settrace` with
opcode events, in a fresh process per peer: one warm-up run, then 300 requests traced), in all
and by function, and lists the functions where each peer executes the most beyond its
like-for-like peer: where the library's own Python per request goes. No valgrind needed; the
C code a bytecode calls (parsing, base64, hashing) is not counted.

Peers (the same work as compare.py's, in one process each):
  aiohttp_memory      POST, `await resp.json()`, b64decode
  gemimg_send         64 tasks awaiting `client.send(request)`, results in memory
  gemimg_map          `client.map(requests)` with max_concurrency=64, in memory
  aiohttp_floor       aiohttp_memory plus what the library cannot skip per request: a validated
                      `ImageRequest`, an Idempotency-Key, a pool place (`asyncio.Semaphore`), the
                      images dialect's body, the client's read timeout, strict base64, the image's
                      type and size from its head, and the values a caller gets (`GeneratedImage`,
                      `GenerationResult`, `Outcome`): the floor a client of this shape sits on
  aiohttp_crash_safe  aiohttp_memory, then compare.py's crash-safe write in one thread hop
  gemimg_map_save_to  `client.map(requests, save_to=folder)`
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import json
import operator
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
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
PEERS = (
    "aiohttp_memory",
    "gemimg_send",
    "gemimg_map",
    "aiohttp_floor",
    "aiohttp_crash_safe",
    "gemimg_map_save_to",
)
LIKE_FOR_LIKE = {
    "aiohttp_floor": "aiohttp_memory",
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


async def _floor(relay: str, requests: int) -> None:
    import aiohttp  # noqa: PLC0415 - a worker imports its own peer only

    import gemimg_async as gi  # noqa: PLC0415
    from gemimg_async._config import Timeouts  # noqa: PLC0415 - the library's own pieces
    from gemimg_async._dialects import ImagesDialect, base_url  # noqa: PLC0415
    from gemimg_async._media import sniff  # noqa: PLC0415
    from gemimg_async._naming import new_key  # noqa: PLC0415
    from gemimg_async._prices import estimate  # noqa: PLC0415
    from gemimg_async._save import Saver  # noqa: PLC0415

    dialect, base, timeouts = ImagesDialect(), base_url(relay), Timeouts()
    saver = Saver()  # one per client, and its requests' estimate (all alike here): the client's
    cost = estimate(gi.ImageRequest(PROMPT, model=MODEL))
    timeout = aiohttp.ClientTimeout(connect=timeouts.connect, sock_read=timeouts.read_for(MODEL))
    place = asyncio.Semaphore(IN_FLIGHT)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(number: int) -> None:
            request = gi.ImageRequest(
                PROMPT, model=MODEL, response_format="b64_json", id=f"{number:05d}"
            )
            async with place:
                key, began = new_key(), time.monotonic()
                outgoing = dialect.outgoing(base, request, [])
                headers = {**auth, "Content-Type": "application/json", "Idempotency-Key": key}
                async with http.post(
                    outgoing.url, data=outgoing.body, headers=headers, timeout=timeout
                ) as resp:
                    resp.raise_for_status()
                    doc = json.loads(await resp.read())
            data = binascii.a2b_base64(doc["data"][0]["b64_json"], strict_mode=True)
            info = sniff(data[:4096])
            if info is None or not data.endswith(b"IEND\xaeB`\x82"):
                raise RuntimeError("not a whole PNG")
            image = gi.GeneratedImage(
                0,
                data=data,
                media_type=info.media_type,
                width=info.width,
                height=info.height,
                byte_size=len(data),
            )
            ended = time.monotonic()
            timings = gi.Timings(0.0, ended - began)
            result = gi.GenerationResult(
                request=request,
                images=(image,),
                created=doc.get("created"),
                idempotency_key=key,
                request_ids=(),
                attempts=1,
                timings=timings,
                stem=f"{number:05d}",
                saver=saver,
                cost=cost,
            )
            gi.Outcome(
                number,
                request,
                result=result,
                attempts=1,
                timings=timings,
                started=began,
                finished=ended,
                cost=cost,
            )

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
        if peer == "aiohttp_floor":
            asyncio.run(_floor(relay, requests))
        elif peer.startswith("aiohttp"):
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


def count(peer: str, relay: str, requests: int, *, caches: bool) -> subprocess.Popen[str]:
    """A worker under callgrind; its stderr ends with `Collected : N ...`."""
    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    if caches:
        valgrind += ["--cache-sim=yes", "--branch-sim=yes"]
    return subprocess.Popen(
        [*valgrind, *_command(peer, relay, requests)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE,
    )


def collected(process: subprocess.Popen[str]) -> list[int]:
    """Callgrind's totals: instructions, then (with the simulators) what CACHE_EVENTS lists."""
    _, err = process.communicate()
    found = re.search(r"Collected : ([\d ]+)", err)
    if process.returncode or found is None:
        raise RuntimeError(f"a worker failed: {err.strip().splitlines()[-1:]}")
    return [int(value) for value in found[1].split()]


CACHE_EVENTS = (
    "Ir",
    "Dr",
    "Dw",
    "I1mr",
    "D1mr",
    "D1mw",
    "ILmr",
    "DLmr",
    "DLmw",
    "Bc",
    "Bcm",
    "Bi",
    "Bim",
)
"""Callgrind's events with `--cache-sim=yes --branch-sim=yes`, in its order."""
CACHE_COLUMNS = {
    "instructions": ("Ir",),
    "instruction cache misses": ("I1mr",),
    "data cache misses": ("D1mr", "D1mw"),
    "mispredicted branches": ("Bcm", "Bim"),
}
"""What `--caches` prints per request: the sums of these events (simulated first-level caches
and branch predictor: where a bytecode costs more than its instructions)."""


def per_request_events(peer: str, relay: str, *, caches: bool) -> dict[str, float]:
    """Each column's events per request: the 600-request run less the 200-request run."""
    low, high = (count(peer, relay, n, caches=caches) for n in COUNTS)  # at once: two cores
    spent = dict(
        zip(CACHE_EVENTS, map(operator.sub, collected(high), collected(low)), strict=False)
    )
    columns = CACHE_COLUMNS if caches else {"instructions": ("Ir",)}
    requests = COUNTS[1] - COUNTS[0]
    return {
        name: sum(spent[event] for event in events) / requests for name, events in columns.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="run each worker once, no valgrind")
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    parser.add_argument("--bytecodes", action="store_true", help="count Python bytecodes instead")
    parser.add_argument(
        "--caches",
        action="store_true",
        help="with valgrind's cache and branch simulators: misses and mispredictions too",
    )
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
        found = {}
        for peer in args.peers:
            found[peer] = per_request_events(peer, relay, caches=args.caches)
            print(
                f"{peer}: {found[peer]['instructions']:,.0f} instructions per request", flush=True
            )
    columns = list(next(iter(found.values())))
    header = " | ".join(f"{column} per request | vs like-for-like" for column in columns)
    print(f"\n| peer | {header} |")
    print(f"| --- |{' ---: | ---: |' * len(columns)}")
    for peer, values in found.items():
        theirs = found.get(LIKE_FOR_LIKE.get(peer, ""))
        cells = [
            f"{values[column]:,.0f} | {values[column] / theirs[column]:.2f}x"
            if theirs
            else f"{values[column]:,.0f} |"
            for column in columns
        ]
        print(f"| {peer} | {' | '.join(cells)} |")
    print(
        "(each ratio against the like-for-like peer:",
        ", ".join(f"{peer} vs {theirs}" for peer, theirs in LIKE_FOR_LIKE.items() if peer in found)
        + ")",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
