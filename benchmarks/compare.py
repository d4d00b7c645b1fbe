"""gemimg_async side by side with hand-written aiohttp loops and the openai SDK.

    python benchmarks/compare.py               # every workload and peer; the goal cases 5 times
    python benchmarks/compare.py --quick       # a smoke run: small counts, one round, seconds
    python benchmarks/compare.py --goals-only  # only what the goal table compares, 5 rounds
    python benchmarks/compare.py --memory      # also bench_memory.py's 16 x 4K workload

What it measures, for every (workload, peer): requests/s, the client's CPU per request (user +
system time of all its threads, `resource.getrusage`), its peak RSS (`ru_maxrss`), the worst
event-loop stall (a task sleeping 5 ms in a loop, `_loopstall.py`), and the fake relay's own CPU
over the same window: the relay is one Python thread, so its CPU time bounds how long it can
have held the client up. Each case's line also gives the client's garbage collections per 1,000
requests, by generation (more young collections, more objects looked at; a full one walks the
whole heap).

How: the parent imports no client. It raises RLIMIT_NOFILE to the hard limit (the relays and the
workers inherit it; the workers raise it again), starts the fake relay (`gemimg-async
fake-server`, ~23 KB gradient PNGs of the standard model) in its own process, one answering at
once for the throughput workloads and one answering after the latency for the fan-out workloads,
and runs each case in a fresh `compare.py --worker` process that imports only its peer, measures
one run and prints one JSON line. Rounds are interleaved: round 1 runs every case, rounds 2 to 5
run again the cases the goals compare (`--context-rounds` runs the others more than once). The
tables show medians over rounds, and each ratio is the median of the per-round ratios. Every file
a peer writes is checked against the relay's PNG before its row counts. Then the import time of
each library in fresh processes; then, with `--memory`, bench_memory.py in a subprocess. It
writes every figure as JSON and draws a chart (matplotlib, from the `bench` extra).

Workloads:
  throughput b64_json, url  2,000 requests, 64 in flight, no relay latency
  fan-out N                 2 x N b64_json requests, N in flight (1, 64, 256, 1,024), 2 s relay
                            latency: two waves, so at most N / 2 s requests/s

Peers (each keeps at most N requests in flight):
  gemimg_save_to      gi.Client(max_concurrency=N).map(requests, save_to=folder)
  gemimg_memory       the same without save_to: b64_json bytes (or the URL) kept in memory
  aiohttp_memory      POST, `await resp.json()`, b64decode (url: keep the URL)
  aiohttp_plain       the same (url: then GET, `await resp.read()`), then open/write on the loop
  aiohttp_crash_safe  the same, then temp file in the folder, write, fsync, link to the final name,
                      unlink the temp, fsync the folder: one asyncio.to_thread hop per image
  openai              AsyncOpenAI(base_url=...).images.generate, b64decode (url: GET with the SDK's
                      httpx), write on the loop
The hand-written and openai peers run N tasks taking request numbers from one shared iterator;
gemimg_async's `map` pulls its requests lazily the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import gc
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _loopstall import StallProbe
from bench_memory import (
    API_KEY,
    PROMPT,
    RSS_DISAGREEMENT,
    _peak_rss_kib,
    _revision,
    _sha256,
    _table,
    _vm_hwm_kib,
    fake_relay_process,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODEL = "gemini-3-pro-image-preview"
"""The standard model: with the relay's gradient style, a 1:1 image is a ~23 KB PNG."""
STYLE = "gradient"

PEERS = (
    "gemimg_save_to",
    "gemimg_memory",
    "aiohttp_memory",
    "aiohttp_plain",
    "aiohttp_crash_safe",
    "openai",
)
WRITES_FILES = frozenset({"gemimg_save_to", "aiohttp_plain", "aiohttp_crash_safe", "openai"})
PAIRS = (("gemimg_memory", "aiohttp_memory"), ("gemimg_save_to", "aiohttp_crash_safe"))
"""gemimg_async and its like-for-like hand-written peer."""
LIBRARIES = ("gemimg_async", "aiohttp", "openai")
"""Import time is measured for these."""

KIB_PER_MB = 1024
RELAY_BUSY = 0.75
"""A relay busy this share of a run (of one core) may have set that row's pace."""
NOFILE_MARGIN = 64
"""File descriptors a process needs beyond one socket per request in flight."""


@dataclass(frozen=True)
class Goal:
    workload: str
    """A workload key; `fanout-top` is the fan-out with the most in flight."""
    ours: str
    theirs: str
    metric: str
    at_most: bool
    bound: float
    text: str


GOALS = (
    Goal(
        "throughput-b64_json",
        "gemimg_memory",
        "aiohttp_memory",
        "cpu_ms",
        at_most=True,
        bound=1.25,
        text="tiny b64_json, results in memory: CPU ms/request",
    ),
    Goal(
        "throughput-b64_json",
        "gemimg_save_to",
        "aiohttp_crash_safe",
        "cpu_ms",
        at_most=True,
        bound=1.25,
        text="tiny b64_json, save_to=: CPU ms/request",
    ),
    Goal(
        "fanout-top",
        "gemimg_save_to",
        "aiohttp_crash_safe",
        "rps",
        at_most=False,
        bound=0.9,
        text="relay latency, save_to=: requests/s",
    ),
    Goal(
        "fanout-top",
        "gemimg_save_to",
        "aiohttp_crash_safe",
        "cpu_ms",
        at_most=True,
        bound=1.25,
        text="relay latency, save_to=: CPU ms/request",
    ),
)


def raise_nofile_limit() -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to the hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields 3.. of proc(5): utime is 14, stime 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the worker: one peer, one workload ----------------------------------------------------------


@dataclass(frozen=True)
class Job:
    relay: str
    response_format: str
    requests: int
    in_flight: int
    out: Path
    image_bytes: int


RunAll = Callable[[], Awaitable[int]]
"""Run every request of the job; return how many images came back whole."""
Peer = Callable[[Job], AbstractAsyncContextManager[RunAll]]
One = Callable[[int], Awaitable[int]]
"""Run request number i; 1 if its image came back whole."""


async def drive(one: One, job: Job) -> int:
    """`job.in_flight` tasks taking request numbers from one shared iterator."""
    numbers = iter(range(job.requests))

    async def work() -> int:
        return sum([await one(number) for number in numbers])

    tasks = min(job.in_flight, job.requests)
    return sum(await asyncio.gather(*(work() for _ in range(tasks))))


def write_crash_safe(folder: Path, name: str, data: bytes) -> None:
    """Temp file, write, fsync, link to the final name (never replace), unlink, fsync folder."""
    temp = folder / f".{name}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temp, folder / name)
    finally:
        temp.unlink()
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


def _load_gemimg(*, save: bool, api: str) -> Peer:
    import gemimg_async as gi  # noqa: PLC0415 - a worker imports its own peer only

    def whole(result: gi.GenerationResult, job: Job) -> int:
        image = result.images[0]
        if save:
            return int(image.path is not None)
        if job.response_format == "url":
            return int(bool(image.url))
        return int(image.data is not None and len(image.data) == job.image_bytes)

    @contextlib.asynccontextmanager
    async def peer(job: Job) -> AsyncIterator[RunAll]:
        folder = job.out if save else None

        def request(number: int) -> gi.ImageRequest:
            return gi.ImageRequest(
                PROMPT, model=MODEL, response_format=job.response_format, id=f"{number:05d}"
            )

        async with gi.Client(API_KEY, job.relay, max_concurrency=job.in_flight) as client:

            async def with_map() -> int:
                requests = (request(number) for number in range(job.requests))
                count = 0
                async with contextlib.aclosing(client.map(requests, save_to=folder)) as outcomes:
                    async for outcome in outcomes:
                        if outcome.error is not None:
                            raise outcome.error
                        assert outcome.result is not None
                        count += whole(outcome.result, job)
                return count

            async def one(number: int) -> int:
                return whole(await client.send(request(number), save_to=folder), job)

            yield with_map if api == "map" else lambda: drive(one, job)

    return peer


def _load_aiohttp(save: str) -> Peer:
    import aiohttp  # noqa: PLC0415 - a worker imports its own peer only

    @contextlib.asynccontextmanager
    async def peer(job: Job) -> AsyncIterator[RunAll]:
        endpoint = f"{job.relay}/v1/images/generations"
        body = {"model": MODEL, "prompt": PROMPT, "response_format": job.response_format}
        headers = {"Authorization": f"Bearer {API_KEY}"}
        connector = aiohttp.TCPConnector(limit=job.in_flight)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def answer() -> bytes | str:
                async with http.post(endpoint, json=body, headers=headers) as resp:
                    resp.raise_for_status()
                    doc = await resp.json()
                item = doc["data"][0]
                if job.response_format == "b64_json":
                    return base64.b64decode(item["b64_json"])
                if save == "memory":
                    return str(item["url"])
                async with http.get(item["url"]) as resp:
                    resp.raise_for_status()
                    return await resp.read()

            async def one(number: int) -> int:
                data = await answer()
                if isinstance(data, str):
                    return int(bool(data))
                name = f"{number:05d}.png"
                if save == "plain":
                    (job.out / name).write_bytes(data)  # on the loop, no fsync
                elif save == "crash_safe":
                    await asyncio.to_thread(write_crash_safe, job.out, name, data)
                return int(len(data) == job.image_bytes)

            yield lambda: drive(one, job)

    return peer


def _load_openai() -> Peer:
    import openai  # noqa: PLC0415 - a worker imports its own peer only

    try:  # the SDK's own HTTP library: httpx, renamed httpx2 in the 3.x SDKs
        import httpx2 as httpx  # noqa: PLC0415
    except ImportError:
        import httpx  # type: ignore[no-redef]  # noqa: PLC0415

    @contextlib.asynccontextmanager
    async def peer(job: Job) -> AsyncIterator[RunAll]:
        # The SDK keeps 100 connections alive by default: allow one per request in flight, as
        # the other peers do. Its default connect timeout, 5 s, is shorter than the loop stalls
        # of its own at 1,024 in flight: give it aiohttp's defaults (30 s, 300 s in all).
        # max_retries=0: a failure shows instead of being retried.
        limits = httpx.Limits(
            max_connections=job.in_flight, max_keepalive_connections=job.in_flight
        )
        timeout = httpx.Timeout(300.0, connect=30.0)
        async with (
            openai.AsyncOpenAI(
                api_key=API_KEY,
                base_url=f"{job.relay}/v1",
                max_retries=0,
                timeout=timeout,
                http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout),
            ) as sdk,
            httpx.AsyncClient(limits=limits, timeout=timeout) as http,
        ):

            async def one(number: int) -> int:
                answer = await sdk.images.generate(
                    model=MODEL, prompt=PROMPT, response_format=job.response_format
                )
                assert answer.data
                image = answer.data[0]
                if job.response_format == "b64_json":
                    assert image.b64_json is not None
                    data = base64.b64decode(image.b64_json)
                else:
                    assert image.url is not None
                    resp = await http.get(image.url)
                    resp.raise_for_status()
                    data = resp.content
                (job.out / f"{number:05d}.png").write_bytes(data)  # as the SDK's examples do
                return int(len(data) == job.image_bytes)

            yield lambda: drive(one, job)

    return peer


def load_peer(name: str, gemimg_api: str) -> Peer:
    """Import the peer's library (only this one) and return its runner."""
    if name.startswith("gemimg_"):
        return _load_gemimg(save=name == "gemimg_save_to", api=gemimg_api)
    if name.startswith("aiohttp_"):
        return _load_aiohttp(name.removeprefix("aiohttp_"))
    return _load_openai()


@contextlib.asynccontextmanager
async def _probe(interval: float) -> AsyncIterator[StallProbe | None]:
    if interval <= 0:
        yield None
        return
    async with StallProbe(interval=interval) as probe:
        yield probe


async def measure(peer: Peer, job: Job, relay_pid: int, interval: float) -> dict[str, Any]:
    """Run the job once: wall time, CPU of every thread, worst loop stall, the relay's CPU."""
    async with peer(job) as run_all, _probe(interval) as probe:
        relay_before = process_cpu_s(relay_pid)
        before = resource.getrusage(resource.RUSAGE_SELF)
        collections_before = [stats["collections"] for stats in gc.get_stats()]
        started = time.perf_counter()
        whole = await run_all()
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        collections = [
            stats["collections"] - was
            for stats, was in zip(gc.get_stats(), collections_before, strict=True)
        ]
        relay_after = process_cpu_s(relay_pid)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    relay_cpu = None if relay_before is None or relay_after is None else relay_after - relay_before
    return {
        "whole_images": whole,
        "wall_s": wall,
        "rps": job.requests / wall,
        "user_s": after.ru_utime - before.ru_utime,
        "system_s": after.ru_stime - before.ru_stime,
        "cpu_ms": cpu * 1000 / job.requests,
        "client_cpu_pct": cpu * 100 / wall,
        "relay_cpu_s": relay_cpu,
        "relay_cpu_pct": None if relay_cpu is None else relay_cpu * 100 / wall,
        "relay_cpu_ms": None if relay_cpu is None else relay_cpu * 1000 / job.requests,
        "worst_stall_ms": None if probe is None else probe.worst * 1000,
        "worst_stall_own_ms": None if probe is None else probe.worst_own * 1000,
        "stalls_over_20ms": None if probe is None else len(probe.stalls),
        "context_switches": after.ru_nvcsw - before.ru_nvcsw + after.ru_nivcsw - before.ru_nivcsw,
        "gc_per_1000": [count * 1000 / job.requests for count in collections],
    }


def check_files(folder: Path, sha256: str) -> dict[str, int]:
    files = [path for path in folder.iterdir() if path.is_file()]
    return {"files": len(files), "correct_files": sum(_sha256(path) == sha256 for path in files)}


def worker(args: argparse.Namespace) -> int:
    nofile = raise_nofile_limit()
    started = time.perf_counter()
    peer = load_peer(args.peer, args.gemimg_api)  # the imports
    import_s = time.perf_counter() - started
    baseline_kib = _peak_rss_kib()
    out = Path(tempfile.mkdtemp(prefix=f"compare-{args.peer}-", dir=args.tmp_dir))
    job = Job(args.relay, args.format, args.requests, args.in_flight, out, args.image_bytes)
    record: dict[str, Any] = {
        "peer": args.peer,
        "workload": args.workload,
        "format": args.format,
        "requests": args.requests,
        "in_flight": args.in_flight,
        "peer_import_s": import_s,
        "baseline_rss_kib": baseline_kib,
        "nofile": nofile,
    }
    try:
        record |= asyncio.run(measure(peer, job, args.relay_pid, args.probe_ms / 1000))
        record["peak_rss_kib"] = _peak_rss_kib()
        record["vm_hwm_kib"] = _vm_hwm_kib()
        record["peak_rss_mb"] = record["peak_rss_kib"] / KIB_PER_MB
        ok = record["whole_images"] == args.requests
        if args.peer in WRITES_FILES:
            record |= check_files(out, args.sha256)
            ok = ok and record["files"] == record["correct_files"] == args.requests
        record["ok"] = ok
    except Exception as error:  # noqa: BLE001 - reported to the parent, which prints it
        record["error"] = f"{type(error).__name__}: {error}"[:500]
        record["ok"] = False
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(record), flush=True)
    return 0


# --- the parent: relays, workloads, rounds -------------------------------------------------------
# The parent imports no client and holds no image: a child's ru_maxrss starts at its parent's
# RSS at the moment of the spawn. matplotlib is imported only after the last worker has run.


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    response_format: str
    requests: int
    in_flight: int
    latency: float
    peers: tuple[str, ...]


@dataclass(frozen=True)
class Relay:
    url: str
    pid: int
    latency: float
    sha256: str
    image_bytes: int
    nofile: str
    """Its open-files limit, as /proc reports it."""


def workloads(args: argparse.Namespace) -> list[Workload]:
    """The throughput workloads (no latency), then fan-out at each in-flight level."""
    out = [
        Workload(
            f"throughput-{response_format}",
            f"throughput {response_format}: {args.requests:,} requests (half in the cases no "
            f"goal compares, at most {OPENAI_REQUESTS:,} for openai), "
            f"{args.in_flight} in flight, no relay latency",
            response_format,
            args.requests,
            args.in_flight,
            0.0,
            tuple(args.peers),
        )
        for response_format in args.formats
    ]
    top = max(args.fanout, default=0)
    for level in args.fanout:
        # one wave below the top level (no goal compares them; every process waits for each
        # wave's latency); the top level, a goal's, keeps `--waves`
        requests = (args.waves if level == top or args.quick else 1) * level
        peers = tuple(p for p in args.fanout_peers if p != "openai" or level <= OPENAI_MAX_FANOUT)
        share = "" if requests == level else f" ({level:,} in the cases no goal compares)"
        title = (
            f"fan-out {level:,}: {requests:,} b64_json requests{share}, {level:,} in flight, "
            f"relay latency {args.latency:g} s (so at most {level / args.latency:,.1f} requests/s)"
        )
        out.append(
            Workload(
                f"fanout-{level}",
                title,
                "b64_json",
                requests,
                level,
                args.latency,
                peers,
            )
        )
    return out


def top_fanout(plan: Sequence[Workload]) -> Workload | None:
    fanouts = [workload for workload in plan if workload.key.startswith("fanout-")]
    return max(fanouts, key=lambda workload: workload.in_flight) if fanouts else None


def goal_workload(goal: Goal, plan: Sequence[Workload]) -> Workload | None:
    if goal.workload == "fanout-top":
        return top_fanout(plan)
    return next((workload for workload in plan if workload.key == goal.workload), None)


def goal_cases(plan: Sequence[Workload]) -> set[tuple[str, str]]:
    """The (workload, peer) cases the goal table compares."""
    cases = set()
    for goal in GOALS:
        workload = goal_workload(goal, plan)
        if workload is not None:
            cases |= {(workload.key, goal.ours), (workload.key, goal.theirs)}
    return cases


def only_goal_cases(plan: Sequence[Workload]) -> list[Workload]:
    cases = goal_cases(plan)
    kept = []
    for workload in plan:
        peers = tuple(peer for peer in workload.peers if (workload.key, peer) in cases)
        if peers:
            kept.append(Workload(**(asdict(workload) | {"peers": peers})))
    return kept


def warm(url: str) -> bytes:
    """Ask once per format: the relay renders and caches its image; return the PNG."""
    pngs = []
    for response_format in ("b64_json", "url"):
        body = {"model": MODEL, "prompt": PROMPT, "response_format": response_format}
        request = urllib.request.Request(
            f"{url}/v1/images/generations",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            item = json.loads(answer.read())["data"][0]
        if response_format == "b64_json":
            pngs.append(base64.b64decode(item["b64_json"]))
        else:
            with urllib.request.urlopen(item["url"], timeout=60) as answer:
                pngs.append(answer.read())
    if pngs[0] != pngs[1]:
        raise RuntimeError("the relay answered different images per format")
    return pngs[0]


@contextlib.contextmanager
def relays(latencies: Sequence[float]) -> Iterator[dict[float, Relay]]:
    """One fake relay process per latency, warmed."""
    with contextlib.ExitStack() as stack:
        started = {}
        for latency in dict.fromkeys(latencies):
            url, pid = stack.enter_context(fake_relay_process(latency, STYLE))
            png = warm(url)
            started[latency] = Relay(
                url, pid, latency, hashlib.sha256(png).hexdigest(), len(png), nofile_of(pid)
            )
        yield started


def nofile_of(pid: int) -> str:
    """The 'Max open files' soft limit of process `pid` (Linux), as text."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return line.split()[3]
    return "?"


def _script(*options: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *options]


def precompile(peers: Sequence[str]) -> None:
    """Import every library once: no measured process compiles bytecode or reads a cold disk."""
    modules = ["bench_memory", *dict.fromkeys([*LIBRARIES, *map(_library, peers)])]
    code = "\n".join(f"try: import {module}\nexcept ImportError: pass" for module in modules)
    subprocess.run([sys.executable, "-c", code], cwd=HERE, check=False, capture_output=True)


def _library(peer: str) -> str:
    return "gemimg_async" if peer.startswith("gemimg_") else peer.partition("_")[0]


OPENAI_REQUESTS = 500
"""The openai SDK's share of a throughput workload: it runs at a tenth of the others' pace, and
500 answers give as steady a CPU per request as 2,000 (it is no goal's peer)."""
OPENAI_MAX_FANOUT = 256
"""The highest fan-out the SDK runs at: at 1,024 in flight it holds the loop for seconds at a
time (its stalls are already plain at 256), and the run took a minute."""


CONTEXT_SHARE = 2
"""A case no goal compares runs 1/2 of its workload's requests (at least one wave in flight):
it runs once, as context, and half the requests still give a steady CPU per request."""


def requests_of(workload: Workload, peer: str, *, goal: bool) -> int:
    """How many requests `peer` runs of `workload`: all of them in a goal's case; otherwise
    half (not under its requests in flight), and the SDK's share of a throughput one cut."""
    if goal:
        return workload.requests
    requests = max(workload.requests // CONTEXT_SHARE, workload.in_flight)
    if peer == "openai" and workload.latency == 0:
        return min(requests, OPENAI_REQUESTS)
    return requests


def run_case(
    args: argparse.Namespace, relay: Relay, workload: Workload, peer: str, *, goal: bool = True
) -> dict[str, Any]:
    """One worker process; its record, or a record of how it failed."""
    command = _script("--worker", peer, "--workload", workload.key, "--relay", relay.url)
    command += ["--relay-pid", str(relay.pid), "--format", workload.response_format]
    command += ["--requests-worker", str(requests_of(workload, peer, goal=goal))]
    command += ["--in-flight-worker", str(workload.in_flight), "--sha256", relay.sha256]
    command += ["--image-bytes", str(relay.image_bytes), "--gemimg-api", args.gemimg_api]
    command += ["--probe-ms", str(args.probe_ms)]
    if args.tmp_dir:
        command += ["--tmp-dir", args.tmp_dir]
    failed = {"peer": peer, "workload": workload.key, "ok": False}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return failed | {"error": f"timed out after {args.timeout:g} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return failed | {"error": tail[0][:300]}
    record: dict[str, Any] = json.loads(lines[-1])
    return record


Runs = dict[tuple[str, str], list[dict[str, Any]]]
"""(workload key, peer) -> one record per round it ran in, in round order."""


def case_rounds(args: argparse.Namespace, plan: Sequence[Workload]) -> dict[tuple[str, str], int]:
    """The goal cases run in every round; the others in the first `--context-rounds`."""
    goals = goal_cases(plan)
    context = min(args.context_rounds, args.rounds)
    return {
        (workload.key, peer): args.rounds if (workload.key, peer) in goals else context
        for workload in plan
        for peer in workload.peers
    }


def run_rounds(
    args: argparse.Namespace,
    plan: Sequence[Workload],
    by_latency: dict[float, Relay],
    progress: Callable[[str], None],
) -> Runs:
    rounds = case_rounds(args, plan)
    goals = goal_cases(plan)
    runs: Runs = {case: [] for case in rounds}
    total, done = sum(rounds.values()), 0
    for round_ in range(1, args.rounds + 1):  # rounds, so that a change of load hits every case
        for workload in plan:
            for peer in workload.peers:
                if rounds[workload.key, peer] < round_:
                    continue
                done += 1
                progress(f"({done}/{total}) round {round_}: {workload.key} {peer}")
                started = time.monotonic()
                relay = by_latency[workload.latency]
                goal = (workload.key, peer) in goals or args.quick
                record = run_case(args, relay, workload, peer, goal=goal)
                record |= {"round": round_, "process_s": time.monotonic() - started}
                runs[workload.key, peer].append(record)
                progress("    " + _summary(record))
    return runs


def _summary(record: dict[str, Any]) -> str:
    if not record.get("ok"):
        return f"FAILED: {record.get('error') or _wrong_files(record)}"
    text = (
        f"{_rate(record['rps'])} requests/s, {record['cpu_ms']:.3f} ms CPU/request, "
        f"peak {record['peak_rss_mb']:.0f} MB, worst stall {_ms(record['worst_stall_ms'])} ms, "
        f"relay CPU {_pct(record.get('relay_cpu_pct'))}; {record['process_s']:.1f} s in all"
    )
    if "gc_per_1000" in record:
        by_generation = "/".join(f"{count:.1f}" for count in record["gc_per_1000"])
        text += f"; GC collections per 1,000 requests (generations 0/1/2) {by_generation}"
    hwm = record.get("vm_hwm_kib")
    if hwm and abs(hwm - record["peak_rss_kib"]) > RSS_DISAGREEMENT * hwm:
        text += f"; ru_maxrss {record['peak_rss_kib']} KiB but VmHWM {hwm} KiB"
    return text


def _wrong_files(record: dict[str, Any]) -> str:
    return (
        f"{record.get('whole_images')} whole images, {record.get('correct_files', '-')} of "
        f"{record.get('files', '-')} files equal to the relay's PNG, of {record.get('requests')}"
    )


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:,.0f}"


# --- import time ---------------------------------------------------------------------------------

_IMPORTTIME = re.compile(r"import time:\s+\d+\s+\|\s+(\d+)\s+\|\s?(\S+)\s*$")


def import_once(library: str | None) -> dict[str, float] | None:
    """`python -X importtime -c "import library"` in a fresh process: wall and cumulative ms.

    With `library=None`, `python -c pass`: the bare interpreter's start and exit.
    """
    command = [sys.executable, "-c", "pass"]
    if library is not None:
        command = [sys.executable, "-X", "importtime", "-c", f"import {library}"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = (time.perf_counter() - started) * 1000
    if done.returncode:
        return None
    if library is None:
        return {"import_ms": 0.0, "process_ms": wall}
    for line in done.stderr.splitlines():
        match = _IMPORTTIME.match(line)
        if match and match.group(2) == library:
            return {"import_ms": int(match.group(1)) / 1000, "process_ms": wall}
    return None


def import_times(libraries: Sequence[str], repeat: int) -> dict[str, dict[str, Any]]:
    """Median over `repeat` fresh processes per library, interleaved (after `precompile`)."""
    names: list[str | None] = [None, *libraries]
    samples: dict[str | None, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(repeat):
        for name in names:
            sample = import_once(name)
            if sample is not None:
                samples[name].append(sample)
    bare = [sample["process_ms"] for sample in samples.pop(None)]
    out: dict[str, dict[str, Any]] = {}
    for library, found in samples.items():
        assert library is not None
        out[library] = {"ok": bool(found), "version": _version(library), "runs": len(found)}
        if found:
            out[library] |= {
                "import_ms": statistics.median(s["import_ms"] for s in found),
                "process_ms": statistics.median(s["process_ms"] for s in found),
                "bare_interpreter_ms": statistics.median(bare) if bare else None,
            }
    return out


def _version(distribution: str) -> str:
    name = {"gemimg_async": "gemimg-async"}.get(distribution, distribution)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --- the 16 x 4K memory part: bench_memory.py in a subprocess ------------------------------------


def run_memory(args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    """bench_memory.py's own workload (its quick run, or its 16-in-flight table); text and runs."""
    options = ["--quick"] if args.quick else ["--in-flight", "16", "--slope"]
    options += [] if args.quick else ["--repeat", str(args.memory_repeat)]
    options += ["--tmp-dir", args.tmp_dir] if args.tmp_dir else []
    shown = " ".join(["python benchmarks/bench_memory.py", *options])
    progress(f"16 x 4K memory: {shown}")
    with tempfile.TemporaryDirectory(prefix="compare-memory-") as folder:
        raw = Path(folder) / "memory.json"
        command = [sys.executable, str(HERE / "bench_memory.py"), *options, "--json", str(raw)]
        started = time.monotonic()
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
        elapsed = time.monotonic() - started
        runs = json.loads(raw.read_text())["runs"] if raw.exists() else []
    return {
        "command": shown,
        "returncode": done.returncode,
        "seconds": elapsed,
        "text": done.stdout.strip(),
        "runs": runs,
    }


# --- medians, ratios, goals ----------------------------------------------------------------------

METRICS = ("rps", "cpu_ms", "peak_rss_mb", "worst_stall_ms")
MEDIAN_KEYS = (
    *METRICS,
    "wall_s",
    "worst_stall_own_ms",
    "client_cpu_pct",
    "relay_cpu_pct",
    "relay_cpu_ms",
    "baseline_rss_kib",
    "peer_import_s",
    "context_switches",
)


def median_record(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the rounds; failed if any round failed."""
    bad = [record for record in records if not record.get("ok")]
    if bad or not records:
        return (bad[0] if bad else {}) | {"ok": False, "rounds": len(records)}
    merged = dict(records[0]) | {"rounds": len(records)}
    for key in ("round", "process_s"):
        merged.pop(key, None)
    for key in MEDIAN_KEYS:
        values = [record[key] for record in records if record.get(key) is not None]
        merged[key] = statistics.median(values) if values else None
    return merged


def round_ratios(runs: Runs, workload: str, ours: str, theirs: str, metric: str) -> list[float]:
    """ours / theirs in each round where both ran correctly."""
    theirs_by_round = {record["round"]: record for record in runs.get((workload, theirs), [])}
    ratios = []
    for mine in runs.get((workload, ours), []):
        other = theirs_by_round.get(mine["round"])
        if other is None or not (mine.get("ok") and other.get("ok")):
            continue
        if mine.get(metric) is not None and other.get(metric):
            ratios.append(mine[metric] / other[metric])
    return ratios


def ratio_rows(runs: Runs, plan: Sequence[Workload]) -> list[dict[str, Any]]:
    """Per workload and like-for-like pair: the median of the per-round ratio of each metric."""
    rows = []
    for workload in plan:
        for ours, theirs in PAIRS:
            if not {ours, theirs} <= set(workload.peers):
                continue
            row: dict[str, Any] = {"workload": workload.key, "ours": ours, "theirs": theirs}
            for metric in METRICS:
                ratios = round_ratios(runs, workload.key, ours, theirs, metric)
                row[metric] = statistics.median(ratios) if ratios else None
                row[f"{metric}_rounds"] = ratios
            rows.append(row)
    return rows


def goal_rows(runs: Runs, plan: Sequence[Workload]) -> list[dict[str, Any]]:
    rows = []
    for goal in GOALS:
        workload = goal_workload(goal, plan)
        row: dict[str, Any] = asdict(goal) | {"ratio": None, "met": None, "ratios": []}
        if workload is not None:
            ratios = round_ratios(runs, workload.key, goal.ours, goal.theirs, goal.metric)
            latency = f", {workload.latency:g} s latency" if workload.latency else ""
            row |= {"workload": workload.key, "ratios": ratios}
            row["text"] = (
                f"{workload.requests:,} at {workload.in_flight:,} in flight{latency}: {goal.text}"
            )
        if row["ratios"]:
            ratio = statistics.median(row["ratios"])
            met = ratio <= goal.bound if goal.at_most else ratio >= goal.bound
            row |= {"ratio": ratio, "met": met}
        rows.append(row)
    return rows


# --- the report ----------------------------------------------------------------------------------

PEER_HEADER = (
    "peer",
    "requests/s",
    "CPU ms/request",
    "peak RSS MB",
    "worst stall ms",
    "client CPU",
    "relay CPU",
    "rounds",
    "correct",
)


def _cells(peer: str, record: dict[str, Any]) -> list[str]:
    if not record.get("ok"):
        reason = record.get("error") or _wrong_files(record)
        return [peer, *["-"] * (len(PEER_HEADER) - 3), str(record.get("rounds")), f"NO: {reason}"]
    return [
        peer,
        _rate(record["rps"]),
        f"{record['cpu_ms']:.3f}",
        f"{record['peak_rss_mb']:.0f}",
        _ms(record["worst_stall_ms"]),
        _pct(record["client_cpu_pct"]),
        _pct(record["relay_cpu_pct"]),
        str(record["rounds"]),
        "yes",
    ]


Medians = dict[str, dict[str, dict[str, Any]]]
"""workload key -> peer -> median record."""


def workload_section(workload: Workload, medians: Medians) -> str:
    rows = [_cells(peer, medians[workload.key][peer]) for peer in workload.peers]
    table = _table(PEER_HEADER, rows, text_columns=1)
    return "\n".join([f"### {workload.title}", "", table, "", relay_note(workload, medians)])


def relay_note(workload: Workload, medians: Medians) -> str:
    """Whether the fake relay could have set the pace: its busiest share of one core."""
    busy = [
        (record["relay_cpu_pct"], peer)
        for peer in workload.peers
        if (record := medians[workload.key][peer]).get("ok") and record.get("relay_cpu_pct")
    ]
    if not busy:
        return "Relay: its CPU could not be read."
    pct, peer = max(busy)
    pacing = [peer for pct, peer in busy if pct >= RELAY_BUSY * 100]
    text = (
        f"Relay: at most {pct:.0f}% of one core (during {peer}), so it held no row up for more "
        f"than {pct:.0f}% of its time"
    )
    if pacing:
        return text + f"; it may have set the pace of {', '.join(pacing)}."
    return text + ": not the bottleneck."


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def ratios_section(ratios: Sequence[dict[str, Any]], goals: Sequence[dict[str, Any]]) -> str:
    header = ("workload", "gemimg_async", "vs", "requests/s", "CPU/request", "peak RSS", "stall")
    rows = [
        [row["workload"], row["ours"], row["theirs"], *(_ratio(row[metric]) for metric in METRICS)]
        for row in ratios
    ]
    goal_header = ("goal", "gemimg_async vs", "measured", "goal", "result", "per round")
    goal_table = [
        [
            row["text"],
            row["theirs"],
            _ratio(row["ratio"]),
            f"{'<=' if row['at_most'] else '>='} {row['bound']:g}x",
            "-" if row["met"] is None else ("PASS" if row["met"] else "MISS"),
            " ".join(f"{ratio:.2f}" for ratio in row["ratios"]) or "-",
        ]
        for row in goals
    ]
    return "\n".join(
        [
            "### Ratios: gemimg_async / its like-for-like peer (medians of the per-round ratios)",
            "",
            _table(header, rows, text_columns=3),
            "",
            "### Goals",
            "",
            _table(goal_header, goal_table, text_columns=2),
        ]
    )


def import_section(imports: dict[str, dict[str, Any]], repeat: int) -> str:
    header = ("library", "version", "import ms", "python -c 'import X' ms", "bare python ms")
    rows = []
    for library, found in imports.items():
        if not found["ok"]:
            rows.append([library, found["version"], "-", "-", "-"])
            continue
        bare = found["bare_interpreter_ms"]
        rows.append(
            [
                library,
                found["version"],
                f"{found['import_ms']:.0f}",
                f"{found['process_ms']:.0f}",
                "-" if bare is None else f"{bare:.0f}",
            ]
        )
    title = (
        f"### Import time (median of {repeat} fresh processes each; import ms: the cumulative "
        "figure of `-X importtime`; then the wall time of the whole command)"
    )
    return "\n".join([title, "", _table(header, rows, text_columns=2)])


def memory_section(memory: dict[str, Any]) -> str:
    status = "" if memory["returncode"] == 0 else f" (exit status {memory['returncode']})"
    title = f"### 16 x 4K memory: `{memory['command']}`, {memory['seconds']:.0f} s{status}"
    return "\n".join([title, "", memory["text"]])


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_context(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "date": args.date,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "revision": _revision(),
        # pybase64: gemimg_async decodes images with it when installed (the speedups extra)
        "versions": {
            library: _version(library) for library in (*LIBRARIES, "matplotlib", "pybase64")
        },
        "load_before": os.getloadavg()[0],
        "quick": args.quick,
        "rounds": args.rounds,
        "context_rounds": min(args.context_rounds, args.rounds),
        "gemimg_api": args.gemimg_api,
        "probe_ms": args.probe_ms,
        "import_repeat": args.import_repeat,
    }


def header(context: dict[str, Any], relays_: Sequence[dict[str, Any]]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in context["versions"].items())
    latencies = ", ".join(f"{relay['latency']:g} s" for relay in relays_)
    machine = (
        f"{context['date']}: {context['cpu']}, {context['cores']} cores, Python "
        f"{context['python']}; gemimg_async {context['revision']}; {versions}."
    )
    load = (
        f"Load average {context['load_before']:.2f} before and {context['load_after']:.2f} "
        f"after; {context['seconds']:.0f} s in all."
    )
    setup = (
        f"Fake relay: `gemimg-async fake-server --style {STYLE}`, one process per latency "
        f"({latencies}); {MODEL}, 1:1, each image a {relays_[0]['image_bytes'] / 1024:.1f} KiB "
        f"PNG. Open files allowed: {', '.join(relay['nofile'] for relay in relays_)} (relays), "
        f"{context['nofile']} (workers)."
    )
    method = (
        f"Goal cases: median of {context['rounds']} interleaved rounds; other cases: "
        f"{context['context_rounds']} (see `rounds`). Each case in a fresh process. CPU = user "
        "+ system of all the client's threads over the run; client and relay CPU in % of one "
        f"core over the run; worst stall: a {context['probe_ms']:g} ms sleep loop's latest "
        "wake-up; MB = 2**20 bytes."
    )
    return f"{machine}\n{load}\n{setup}\n{method}"


def report(result: dict[str, Any], plan: Sequence[Workload]) -> str:
    parts = [header(result["context"], result["relays"])]
    parts += [workload_section(workload, result["medians"]) for workload in plan]
    parts.append(ratios_section(result["ratios"], result["goals"]))
    if result["context"]["quick"]:
        parts[-1] += "\n\n(Quick run: small counts, one round. The goals are shown, not judged.)"
    if result["imports"]:
        parts.append(import_section(result["imports"], result["context"]["import_repeat"]))
    if result["memory"]:
        parts.append(memory_section(result["memory"]))
    return "\n\n".join(parts)


# --- the chart -----------------------------------------------------------------------------------


def chart(result: dict[str, Any], plan: Sequence[Workload], path: Path) -> bool:
    """Throughput (CPU, rate, peak RSS) and import time above; fan-out by requests in flight."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 - only after the last worker ran
    except ImportError:
        return False
    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(2, 4, figsize=(20, 9), constrained_layout=True)
    medians = result["medians"]
    throughput = [workload for workload in plan if workload.key.startswith("throughput-")]
    fanout = [workload for workload in plan if workload.key.startswith("fanout-")]
    _bars(axes[0][0], medians, throughput, "cpu_ms", "throughput: CPU ms/request")
    _bars(axes[0][1], medians, throughput, "rps", "throughput: requests/s")
    _bars(axes[0][2], medians, throughput, "peak_rss_mb", "throughput: peak RSS MB")
    _imports(axes[0][3], result["imports"])
    _lines(axes[1][0], medians, fanout, "rps", "fan-out: requests/s", log=True)
    _lines(axes[1][1], medians, fanout, "cpu_ms", "fan-out: CPU ms/request", log=True)
    _lines(axes[1][2], medians, fanout, "peak_rss_mb", "fan-out: peak RSS MB", log=False)
    _lines(axes[1][3], medians, fanout, "worst_stall_ms", "fan-out: worst loop stall ms", log=True)
    context = result["context"]
    fig.suptitle(
        f"gemimg_async side by side, {context['date']}: {context['cpu']}, {context['cores']} "
        f"cores, Python {context['python']}; gemimg_async {context['revision']}; medians of "
        f"{context['rounds']} rounds (goal cases), {context['context_rounds']} (others)"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=64)
    plt.close(fig)
    return True


def _peers(plan: Sequence[Workload]) -> list[str]:
    return list(dict.fromkeys(peer for workload in plan for peer in workload.peers))


def _bars(axis: Any, medians: Medians, plan: Sequence[Workload], metric: str, title: str) -> None:
    peers = _peers(plan)
    width = 0.8 / max(len(plan), 1)
    for offset, workload in enumerate(plan):
        values = [medians[workload.key][peer].get(metric) or 0.0 for peer in peers]
        xs = [index + offset * width for index in range(len(peers))]
        axis.bar(xs, values, width, label=workload.response_format)
    axis.set_xticks([index + width * (len(plan) - 1) / 2 for index in range(len(peers))])
    axis.set_xticklabels(peers, rotation=25, ha="right", fontsize=8)
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)


def _lines(
    axis: Any, medians: Medians, plan: Sequence[Workload], metric: str, title: str, *, log: bool
) -> None:
    for peer in _peers(plan):
        points = [
            (workload.in_flight, record[metric])
            for workload in plan
            if (record := medians[workload.key].get(peer, {})).get("ok")
            and record.get(metric) is not None
        ]
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", label=peer)
    axis.set_xscale("log", base=2)
    if log:
        axis.set_yscale("log")
    axis.set_xlabel("requests in flight", fontsize=8)
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7)


def _imports(axis: Any, imports: dict[str, dict[str, Any]]) -> None:
    found = {library: entry for library, entry in imports.items() if entry["ok"]}
    axis.bar(list(found), [entry["process_ms"] for entry in found.values()])
    axis.set_title("import time: python -c 'import X', wall ms", fontsize=10)


# --- command line --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="gemimg_async side by side with hand-written aiohttp loops and the openai "
        "SDK against the fake relay: requests/s, CPU/request, peak RSS, worst loop stall.",
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke run: small counts, one round, seconds")
    add("--goals-only", action="store_true", help="only the cases the goal table compares")
    add("--rounds", type=int, help="interleaved rounds of the goal cases (3; quick 1)")
    add("--context-rounds", type=int, default=1, help="rounds of the other cases (1)")
    add("--peers", nargs="+", choices=PEERS, help="throughput peers (default: all)")
    add("--fanout-peers", nargs="+", choices=PEERS, help="fan-out peers (default: all)")
    add("--formats", nargs="+", choices=("b64_json", "url"), help="throughput formats (both)")
    add("--requests", type=int, help="throughput requests (2000; quick 100)")
    add("--in-flight", type=int, help="throughput requests in flight (64; quick 16)")
    add(
        "--fanout",
        nargs="*",
        type=int,
        metavar="N",
        help="fan-out levels (1 64 256 1024; quick 64)",
    )
    add(
        "--waves",
        type=int,
        default=2,
        help="fan-out requests per place in flight at the top level (2; 1 below it)",
    )
    add("--latency", type=float, help="fan-out relay latency, s (2; quick 0.2)")
    add("--import-repeat", type=int, help="fresh processes per library for import time (3)")
    add("--memory", action="store_true", help="also run bench_memory.py's 16 x 4K workload")
    add("--memory-repeat", type=int, default=1, help="its runs per row (1)")
    add("--gemimg-api", choices=("map", "send"), default="map", help="map, or N tasks of send")
    add("--probe-ms", type=float, default=5.0, help="stall probe interval; 0: no probe (5)")
    add("--json", type=Path, help="results (default benchmarks/results/compare-DATE.json)")
    add("--chart", type=Path, help="PNG chart (default: the JSON's path with .png)")
    add("--no-chart", action="store_true", help="no chart")
    add("--timeout", type=float, default=300.0, help="seconds per worker (300)")
    add("--tmp-dir", help="where workers write their images (default: $TMPDIR)")
    add("--check", action="store_true", help="exit 1 when a goal is missed")
    hidden = argparse.SUPPRESS
    add("--worker", dest="peer", choices=PEERS, help=hidden)
    add("--workload", help=hidden)
    add("--relay", help=hidden)
    add("--relay-pid", type=int, help=hidden)
    add("--format", help=hidden)
    add("--requests-worker", dest="worker_requests", type=int, help=hidden)
    add("--in-flight-worker", dest="worker_in_flight", type=int, help=hidden)
    add("--sha256", help=hidden)
    add("--image-bytes", type=int, help=hidden)
    return parser


def _defaults(args: argparse.Namespace) -> None:
    quick = args.quick
    args.date = dt.datetime.now().astimezone().date().isoformat()
    args.rounds = args.rounds or (1 if quick else 3)
    args.peers = args.peers or list(PEERS)
    args.fanout_peers = args.fanout_peers or list(PEERS)
    args.formats = args.formats or ["b64_json", "url"]
    args.requests = args.requests or (100 if quick else 2000)
    args.in_flight = args.in_flight or (16 if quick else 64)
    if args.fanout is None:
        args.fanout = [64] if quick else [1, 64, 256, 1024]
    args.latency = args.latency or (0.2 if quick else 2.0)
    if args.import_repeat is None:
        args.import_repeat = 1 if quick else 3
    suffix = "-quick" if quick else ""
    args.json = args.json or RESULTS / f"compare-{args.date}{suffix}.json"
    args.chart = args.chart or args.json.with_suffix(".png")


def orchestrate(args: argparse.Namespace) -> int:
    _defaults(args)
    began = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    # Measured processes should load bytecode as an installed package does, not compile it.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    nofile = raise_nofile_limit()  # before the relays start: they and the workers inherit it
    needed = max([args.in_flight, *args.fanout]) + NOFILE_MARGIN
    if nofile < needed:
        progress(f"warning: only {nofile} open files allowed, {needed} needed")
    plan = workloads(args)
    if args.goals_only:
        plan = only_goal_cases(plan)
    precompile(_peers(plan))
    context = machine_context(args) | {"nofile": nofile}
    with relays([workload.latency for workload in plan]) as by_latency:
        listening = ", ".join(f"{r.url} ({r.latency:g} s)" for r in by_latency.values())
        progress(f"fake relays: {listening}")
        runs = run_rounds(args, plan, by_latency, progress)
    progress("import time")
    imports = import_times(LIBRARIES, args.import_repeat) if args.import_repeat else {}
    memory = run_memory(args, progress) if args.memory else None
    context |= {"load_after": os.getloadavg()[0], "seconds": time.monotonic() - began}
    result = {
        "context": context,
        "workloads": [asdict(workload) for workload in plan],
        "relays": [asdict(relay) for relay in by_latency.values()],
        "medians": {
            workload.key: {peer: median_record(runs[workload.key, peer]) for peer in workload.peers}
            for workload in plan
        },
        "ratios": ratio_rows(runs, plan),
        "goals": goal_rows(runs, plan),
        "imports": imports,
        "memory": memory,
        "runs": [record for records in runs.values() for record in records],
    }
    print(report(result, plan), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    progress(f"wrote {args.json}")
    if not args.no_chart:
        drawn = chart(result, plan, args.chart)
        progress(f"wrote {args.chart}" if drawn else "no chart: matplotlib is not installed")
    failed = not all(
        record.get("ok") for peers in result["medians"].values() for record in peers.values()
    )
    missed = any(goal["met"] is False for goal in result["goals"])
    return 1 if failed or (args.check and missed) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.peer:
        args.requests, args.in_flight = args.worker_requests, args.worker_in_flight
        return worker(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
