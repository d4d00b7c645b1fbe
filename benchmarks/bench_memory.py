"""Peak memory, wall time and event-loop stalls of concurrent 4K generations, side by side.

    python benchmarks/bench_memory.py            # the full table (a few minutes on 2 cores)
    python benchmarks/bench_memory.py --quick    # a smoke run (standard model, 4 in flight)

The parent process starts the fake relay in its own process (incompressible "noise" PNGs, about
28 MB for a 4K 16:9 image), warms its image cache, then runs every (peer, format, in-flight) case
in a fresh worker process that imports only its peer, records its RSS after the imports, starts
a loop-stall probe and runs the generations concurrently, writing each image to a temporary
folder. The worker prints one JSON line; the parent checks every file against the relay's PNG and
prints the tables. Every figure is measured in the run that prints it.

Peers:
  gemimg_async  Client(max_concurrency=N).generate(..., save_to=folder)
  naive         aiohttp: `await resp.json()`, b64decode (or GET the URL, `await r.read()`), write
  openai        AsyncOpenAI(base_url=...).images.generate(...), b64decode (or GET the URL with
                the SDK's own HTTP library, httpx, and take `.content`), write
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from _loopstall import StallProbe

PEERS = ("gemimg_async", "gemimg_chat", "gemimg_gemini", "naive", "openai")
DIALECT_PEERS = {"gemimg_chat": "chat", "gemimg_gemini": "gemini"}
"""gemimg_async speaking the other dialects: their answers hold the image inline (chat as a
Markdown data: URL in the message text, gemini in inlineData), so b64_json only."""
FORMATS = ("b64_json", "url")
BASELINE_PEER = "naive"
MODELS = {
    "standard": "gemini-3-pro-image-preview",
    "2k": "gemini-3-pro-image-preview-2k",
    "4k": "gemini-3-pro-image-preview-4k",
}
API_KEY = "sk-test"
PROMPT = "a lighthouse on a cliff at dusk, long exposure, waves breaking on the rocks"

# The targets for gemimg_async.
TARGET_RSS_FACTOR = 5.0
"""Peak RSS for `b64_json` at least this many times below the naive loop's."""
TARGET_SLOPE_MB = 2.0
"""Peak RSS grows by less than this per extra request in flight."""
TARGET_STALL_MS = 20.0
"""The loop is never blocked longer than this."""

MB = 1024 * 1024
KIB_PER_MB = 1024
HASH_BLOCK = 1024 * 1024
RELAY_START_TIMEOUT = 30.0


# --- the worker: one peer, one format, N generations in flight ----------------------------------


ResponseFormat = Literal["url", "b64_json"]


@dataclass(frozen=True)
class Job:
    relay: str
    model: str
    size: str
    response_format: ResponseFormat
    in_flight: int
    out: Path


GenerateOne = Callable[[int], Awaitable[None]]
"""Generate image number i and write it to `{job.out}/...`."""
Session = Callable[[Job], AbstractAsyncContextManager[GenerateOne]]


def _load_gemimg_async(dialect: str = "images") -> Session:
    from gemimg_async import Client  # noqa: PLC0415 - a worker imports its own peer only

    @contextlib.asynccontextmanager
    async def session(job: Job) -> AsyncIterator[GenerateOne]:
        async with Client(
            API_KEY, job.relay, max_concurrency=job.in_flight, dialect=dialect
        ) as client:

            async def one(_: int) -> None:
                await client.generate(
                    PROMPT,
                    model=job.model,
                    size=job.size,
                    response_format=job.response_format,
                    save_to=job.out,
                )

            yield one

    return session


def _load_naive() -> Session:
    import aiohttp  # noqa: PLC0415 - a worker imports its own peer only

    @contextlib.asynccontextmanager
    async def session(job: Job) -> AsyncIterator[GenerateOne]:
        endpoint = f"{job.relay}/v1/images/generations"
        body = {
            "model": job.model,
            "prompt": PROMPT,
            "size": job.size,
            "response_format": job.response_format,
        }
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession() as http:

            async def one(index: int) -> None:
                async with http.post(endpoint, json=body, headers=headers) as resp:
                    resp.raise_for_status()
                    doc = await resp.json()
                item = doc["data"][0]
                if job.response_format == "b64_json":
                    data = base64.b64decode(item["b64_json"])
                else:
                    async with http.get(item["url"]) as resp:
                        resp.raise_for_status()
                        data = await resp.read()
                (job.out / f"{index}.png").write_bytes(data)  # on the loop, as naive code does

            yield one

    return session


def _load_openai() -> Session:
    import openai  # noqa: PLC0415 - a worker imports its own peer only

    try:  # the SDK's own HTTP library: httpx, renamed httpx2 in the 3.x SDKs
        import httpx2 as httpx  # noqa: PLC0415
    except ImportError:
        import httpx  # type: ignore[no-redef]  # noqa: PLC0415

    @contextlib.asynccontextmanager
    async def session(job: Job) -> AsyncIterator[GenerateOne]:
        # max_retries=0: a failure should show, not be retried into the figures.
        async with (
            openai.AsyncOpenAI(api_key=API_KEY, base_url=f"{job.relay}/v1", max_retries=0) as sdk,
            httpx.AsyncClient(timeout=120) as http,
        ):

            async def one(index: int) -> None:
                # The SDK passes an aspect ratio through `size` (typed `str`): no extra_body.
                answer = await sdk.images.generate(
                    model=job.model,
                    prompt=PROMPT,
                    size=job.size,
                    response_format=job.response_format,
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
                (job.out / f"{index}.png").write_bytes(data)  # as the SDK's examples do

            yield one

    return session


LOADERS: dict[str, Callable[[], Session]] = {
    "gemimg_async": _load_gemimg_async,
    "gemimg_chat": lambda: _load_gemimg_async("chat"),
    "gemimg_gemini": lambda: _load_gemimg_async("gemini"),
    "naive": _load_naive,
    "openai": _load_openai,
}


def _peak_rss_kib() -> int:
    """The process's peak RSS: ru_maxrss, in KiB on Linux."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _vm_hwm_kib() -> int | None:
    """VmHWM: the peak RSS of this process image alone (Linux), a cross-check of ru_maxrss.

    ru_maxrss also counts the RSS of the process that spawned this one, at the moment it did;
    VmHWM starts afresh at exec.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


PROVENANCE_KEYWORDS = frozenset(
    word.replace(b"_", b" ")
    for word in b"Description Model Size_Asked Size_Delivered Job_Id Request_Id Idempotency_Key "
    b"Creation_Time Software".split()
)
"""The keywords of gemimg_async's provenance chunks (`gemimg_async._provenance.KEYWORDS`),
written here so that a worker imports nothing but its peer."""


def _sha256(path: Path) -> str:
    """The file's sha256, as the relay sent it: a PNG's provenance `iTXt` chunks (which
    gemimg_async writes after `IHDR`) are left out, every other byte counts."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        head = file.read(8)
        digest.update(head)
        while head == b"\x89PNG\r\n\x1a\n" and len(header := file.read(8)) == 8:
            length, kind = int.from_bytes(header[:4], "big"), header[4:]
            if kind == b"iTXt" and length < HASH_BLOCK:
                data = file.read(length + 4)
                if data.partition(b"\x00")[0] in PROVENANCE_KEYWORDS:
                    continue
                digest.update(header + data)
                continue
            digest.update(header)
            left = length + 4
            while left and (block := file.read(min(left, HASH_BLOCK))):
                digest.update(block)
                left -= len(block)
        while block := file.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


async def _measure(session: Session, job: Job) -> dict[str, Any]:
    async with session(job) as one, StallProbe() as probe:
        started = time.perf_counter()
        await asyncio.gather(*(one(index) for index in range(job.in_flight)))
        wall = time.perf_counter() - started
    worst = sorted(probe.stalls, key=lambda stall: -stall.late)[:5]
    return {
        "wall_s": wall,
        "worst_stall_ms": probe.worst * 1000,
        "worst_stall_own_ms": probe.worst_own * 1000,
        "stalls_over_20ms": len(probe.stalls),
        "worst_stalls": [  # [seconds into the run, ms late, ms of that waiting for a CPU]
            [round(s.at, 3), round(s.late * 1000, 1), round(s.cpu_wait * 1000, 1)] for s in worst
        ],
    }


def worker(args: argparse.Namespace) -> int:
    session = LOADERS[args.peer]()  # the imports
    baseline_kib = _peak_rss_kib()
    out = Path(tempfile.mkdtemp(prefix=f"bench-{args.peer}-", dir=args.tmp_dir))
    response_format = cast("ResponseFormat", args.format)
    job = Job(args.relay, args.model, args.size, response_format, args.in_flight, out)
    record: dict[str, Any] = {
        "peer": args.peer,
        "format": args.format,
        "in_flight": args.in_flight,
        "model": args.model,
        "baseline_rss_kib": baseline_kib,
    }
    try:
        record |= asyncio.run(_measure(session, job))
        record["peak_rss_kib"] = _peak_rss_kib()
        record["vm_hwm_kib"] = _vm_hwm_kib()
        files = sorted(path for path in out.rglob("*") if path.is_file())
        record["files"] = len(files)
        record["bytes_written"] = sum(path.stat().st_size for path in files)
        record["correct_files"] = sum(_sha256(path) == args.sha256 for path in files)
        record["ok"] = record["files"] == record["correct_files"] == args.in_flight
    except Exception as error:  # noqa: BLE001 - reported to the parent, which prints it
        record["error"] = f"{type(error).__name__}: {error}"[:500]
        record["ok"] = False
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(record), flush=True)
    return 0


# --- warming the relay: one request per format, to render the image and learn its hash ----------


def warm(args: argparse.Namespace) -> int:
    """Ask once per format (the relay renders and caches its image); print each PNG's sha256."""
    hashes: dict[str, dict[str, Any]] = {}
    for response_format in args.formats:
        body = {
            "model": args.model,
            "prompt": PROMPT,
            "size": args.size,
            "response_format": response_format,
        }
        request = urllib.request.Request(
            f"{args.relay}/v1/images/generations",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=600) as answer:
            item = json.loads(answer.read())["data"][0]
        if response_format == "b64_json":
            png = base64.b64decode(item["b64_json"])
        else:
            with urllib.request.urlopen(item["url"], timeout=600) as answer:
                png = answer.read()
        hashes[response_format] = {"sha256": hashlib.sha256(png).hexdigest(), "bytes": len(png)}
    print(json.dumps(hashes), flush=True)
    return 0


# --- the parent: relay, plan, workers ----------------------------------------------------------
# The parent stays small and imports no peer: a child's ru_maxrss starts at its parent's RSS
# at the moment of the spawn (Linux carries it over exec), so a big parent would inflate every
# worker's figure. The warm-up, which holds a whole image, runs in a process of its own.


@dataclass(frozen=True)
class Case:
    peer: str
    format: str
    in_flight: int


@contextlib.contextmanager
def fake_relay(latency: float, style: str) -> Iterator[str]:
    """Run the fake relay in its own process; yield its base URL; stop it."""
    with fake_relay_process(latency, style) as (url, _):
        yield url


@contextlib.contextmanager
def fake_relay_process(latency: float, style: str) -> Iterator[tuple[str, int]]:
    """Run the fake relay in its own process; yield its base URL and process id; stop it."""
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as folder:
        url_file = Path(folder) / "url"
        command = [sys.executable, "-m", "gemimg_async", "fake-server", "--port", "0"]
        command += ["--style", style, "--latency", str(latency), "--url-file", str(url_file)]
        command += [
            "--chat-style",
            "markdown",
        ]  # the image inside the message's text: the hard case
        relay = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + RELAY_START_TIMEOUT
            while not (url_file.exists() and url_file.read_text().strip()):
                if relay.poll() is not None:
                    raise RuntimeError(f"the fake relay exited with status {relay.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError("the fake relay did not start")
                time.sleep(0.05)
            yield url_file.read_text().strip(), relay.pid
        finally:
            relay.terminate()
            try:
                relay.wait(timeout=10)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()


def _script(*options: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *options]


def run_warm(args: argparse.Namespace, relay: str) -> dict[str, dict[str, Any]]:
    command = _script("--warm", "--relay", relay, "--model", args.model_name, "--size", args.size)
    command += ["--formats", *args.formats]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode:
        raise RuntimeError(f"warming the relay failed:\n{done.stderr[-2000:]}")
    hashes: dict[str, dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    if len({entry["sha256"] for entry in hashes.values()}) != 1:
        raise RuntimeError(f"the relay answered different images per format: {hashes}")
    return hashes


def run_case(args: argparse.Namespace, relay: str, case: Case, sha256: str) -> dict[str, Any]:
    """One worker process; its record, or a record of how it failed."""
    command = _script("--worker", case.peer, "--format", case.format, "--relay", relay)
    command += ["--in-flight-worker", str(case.in_flight), "--model", args.model_name]
    command += ["--size", args.size, "--sha256", sha256]
    if args.tmp_dir:
        command += ["--tmp-dir", args.tmp_dir]
    failed = {"peer": case.peer, "format": case.format, "in_flight": case.in_flight, "ok": False}
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


def plan(args: argparse.Namespace) -> list[Case]:
    """The peer table's cases, then the slope's extra points; each once."""
    cases = [
        Case(peer, response_format, in_flight)
        for in_flight in args.in_flight
        for response_format in args.formats
        for peer in args.peers
        if response_format == "b64_json" or peer not in DIALECT_PEERS
    ]
    if "gemimg_async" in args.peers and "b64_json" in args.formats:
        cases += [Case("gemimg_async", "b64_json", n) for n in args.slope]
    return list(dict.fromkeys(cases))


def median_record(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One record per case: the median of each figure over the repeats that ran correctly."""
    good = [record for record in records if record.get("ok")]
    if len(good) < len(records):
        bad = next(record for record in records if not record.get("ok"))
        return bad | {"ok": False, "runs": len(records)}
    merged = dict(good[0]) | {"runs": len(good)}
    for key in MEDIAN_KEYS:
        merged[key] = statistics.median(record[key] for record in good)
    return merged


MEDIAN_KEYS = (
    "peak_rss_kib",
    "baseline_rss_kib",
    "wall_s",
    "worst_stall_ms",
    "worst_stall_own_ms",
    "stalls_over_20ms",
)


# --- tables --------------------------------------------------------------------------------------


def _mb(kib: float) -> float:
    return kib / KIB_PER_MB


def _over_baseline_mb(record: dict[str, Any]) -> float:
    return _mb(record["peak_rss_kib"] - record["baseline_rss_kib"])


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int) -> str:
    """A Markdown table: the first `text_columns` columns left-aligned, figures right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.ljust(width) if index < text_columns else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join("-" * width for width in widths) + " |"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


MEASURED_HEADER = (
    "peak RSS MB",
    "over baseline MB",
    "wall s",
    "worst stall ms",
    "excl. CPU wait ms",
    "stalls >20 ms",
    "correct",
)


def _measured_cells(record: dict[str, Any]) -> list[str]:
    if not record.get("ok"):
        reason = record.get("error") or (
            f"{record.get('correct_files')}/{record['in_flight']} files match the relay's PNG"
        )
        return ["-"] * (len(MEASURED_HEADER) - 1) + [f"NO: {reason}"]
    return [
        f"{_mb(record['peak_rss_kib']):.0f}",
        f"{_over_baseline_mb(record):.0f}",
        f"{record['wall_s']:.2f}",
        f"{record['worst_stall_ms']:.1f}",
        f"{record['worst_stall_own_ms']:.1f}",
        f"{record['stalls_over_20ms']:g}",
        "yes",
    ]


def peer_table(args: argparse.Namespace, results: dict[Case, dict[str, Any]], n: int) -> str:
    rows = [
        [peer, response_format, *_measured_cells(results[Case(peer, response_format, n)])]
        for response_format in args.formats
        for peer in args.peers
        if response_format == "b64_json" or peer not in DIALECT_PEERS
    ]
    return _table(("peer", "format", *MEASURED_HEADER), rows, text_columns=2)


def ratio_table(args: argparse.Namespace, results: dict[Case, dict[str, Any]], n: int) -> str:
    """Each peer's figures divided by the naive loop's, same format and load."""

    def ratio(value: float, base: float) -> str:
        return f"{value / base:.2f}x" if base > 0 else "-"

    rows = []
    for response_format in args.formats:
        base = results[Case(BASELINE_PEER, response_format, n)]
        for peer in args.peers:
            record = results.get(Case(peer, response_format, n))
            if record is None:  # a dialect peer: b64_json only
                continue
            if not (base.get("ok") and record.get("ok")):
                rows.append([peer, response_format, "-", "-", "-", "-"])
                continue
            rows.append(
                [
                    peer,
                    response_format,
                    ratio(record["peak_rss_kib"], base["peak_rss_kib"]),
                    ratio(_over_baseline_mb(record), _over_baseline_mb(base)),
                    ratio(record["wall_s"], base["wall_s"]),
                    ratio(record["worst_stall_ms"], base["worst_stall_ms"]),
                ]
            )
    header = ("peer", "format", "peak RSS", "over baseline", "wall", "worst stall")
    return _table(header, rows, text_columns=2)


def slope_of(records: Sequence[dict[str, Any]]) -> float:
    """Least-squares MB of peak RSS (over baseline) per extra request in flight."""
    xs = [record["in_flight"] for record in records]
    ys = [_over_baseline_mb(record) for record in records]
    return statistics.linear_regression(xs, ys).slope


def slope_table(records: Sequence[dict[str, Any]]) -> str:
    rows = [[str(record["in_flight"]), *_measured_cells(record)] for record in records]
    return _table(("in flight", *MEASURED_HEADER), rows, text_columns=0)


Check = tuple[str, bool]


def rss_checks(args: argparse.Namespace, results: dict[Case, dict[str, Any]]) -> list[Check]:
    checks = []
    for n in args.in_flight:
        base = results.get(Case(BASELINE_PEER, "b64_json", n))
        for peer in ("gemimg_async", *DIALECT_PEERS):
            ours = results.get(Case(peer, "b64_json", n))
            if ours and base and ours.get("ok") and base.get("ok"):
                factor = base["peak_rss_kib"] / ours["peak_rss_kib"]
                text = f"{peer} b64_json x{n}: peak RSS {factor:.1f}x below {BASELINE_PEER}'s"
                checks.append(
                    (f"{text} (target >= {TARGET_RSS_FACTOR:g}x)", factor >= TARGET_RSS_FACTOR)
                )
    return checks


def stall_checks(results: dict[Case, dict[str, Any]]) -> list[Check]:
    checks = []
    ours = sorted(
        (case for case in results if case.peer.startswith("gemimg")),
        key=lambda case: (case.peer, case.format, case.in_flight),
    )
    for case in ours:
        record = results[case]
        name = f"{case.peer} {case.format} x{case.in_flight}"
        if not record.get("ok"):
            checks.append((f"{name}: the run failed", False))
            continue
        worst, own = record["worst_stall_ms"], record["worst_stall_own_ms"]
        text = f"{name}: worst loop stall {worst:.1f} ms ({own:.1f} ms excl. CPU wait)"
        checks.append((f"{text} (target < {TARGET_STALL_MS:g} ms)", worst < TARGET_STALL_MS))
    return checks


def report(
    args: argparse.Namespace,
    results: dict[Case, dict[str, Any]],
    context: dict[str, Any],
) -> tuple[str, bool]:
    """The tables and the target checks; and whether every target was met."""
    image_mb = context["image_bytes"] / MB
    machine = (
        f"gemimg_async {context['revision']}; Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {context['load_before']:.2f} before and "
        f"{context['load_after']:.2f} after."
    )
    setup = (
        f"Model {args.model_name}, size {args.size}, relay latency {args.latency:g} s, "
        f"{args.style} images: each a {image_mb:.1f} MB PNG, {image_mb * 4 / 3:.1f} MB as "
        f"base64. Median of {args.repeat} run(s) per row, each in a fresh process; "
        "MB = 2**20 bytes; wall time includes the relay's latency."
    )
    out = [machine, setup]
    for n in args.in_flight:
        out += ["", f"### {n} in flight", "", peer_table(args, results, n)]
        if BASELINE_PEER in args.peers:
            out += ["", f"Ratios to {BASELINE_PEER} (lower is better):", ""]
            out += [ratio_table(args, results, n)]
    checks = rss_checks(args, results)
    slope_cases = [Case("gemimg_async", "b64_json", n) for n in sorted(set(args.slope))]
    slope_records = [results[case] for case in slope_cases if case in results]
    if slope_records:
        out += ["", "### gemimg_async, b64_json, by requests in flight", ""]
        out += [slope_table(slope_records)]
        if len(slope_records) > 1 and all(record.get("ok") for record in slope_records):
            slope = slope_of(slope_records)
            points = ", ".join(str(record["in_flight"]) for record in slope_records)
            out += ["", f"Slope: {slope:.2f} MB of peak RSS per extra request in flight "]
            out[-1] += f"(least squares over {points} in flight)."
            text = f"b64_json: peak RSS grows {slope:.2f} MB per extra request in flight"
            checks.append((f"{text} (target < {TARGET_SLOPE_MB:g} MB)", slope < TARGET_SLOPE_MB))
    checks += stall_checks(results)
    if not args.model_name.endswith("-4k"):
        out += ["", "(The targets are set for 4K images; not checked on this model.)"]
        return "\n".join(out), True
    out += ["", "### Targets for gemimg_async", ""]
    out += [f"- [{'met' if ok else 'MISSED'}] {text}" for text, ok in checks]
    return "\n".join(out), all(ok for _, ok in checks)


def _revision() -> str:
    """The work tree's commit, and whether the library has uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "gemimg_async"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(revision unknown)"
    return f"at {commit}" + (" with uncommitted changes" if dirty else "")


# --- command line --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Peak RSS, wall time and worst event-loop stall of concurrent image "
        "generations against the fake relay: gemimg_async, a naive aiohttp loop, the openai SDK.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: standard model, 4 in flight, gemimg_async and naive, once, no slope",
    )
    parser.add_argument("--peers", nargs="+", choices=PEERS, help="default: all")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, help="default: both")
    parser.add_argument(
        "--in-flight",
        nargs="+",
        type=int,
        metavar="N",
        help="requests in flight for the peer table, one table each (default 16)",
    )
    parser.add_argument(
        "--slope",
        nargs="*",
        type=int,
        metavar="N",
        help="in-flight counts for gemimg_async's b64_json slope (default 4 16 32; none to skip)",
    )
    parser.add_argument(
        "--repeat", type=int, help="runs per case, reported as medians (default 3; quick 1)"
    )
    parser.add_argument("--model", help="standard, 2k, 4k or a full model name (default 4k)")
    parser.add_argument("--size", default="16:9", help="aspect ratio (default 16:9)")
    parser.add_argument(
        "--latency",
        type=float,
        default=1.0,
        help="the relay's seconds per generation, so that the answers overlap (default 1)",
    )
    parser.add_argument("--style", choices=("noise", "gradient"), default="noise")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per worker")
    parser.add_argument("--tmp-dir", help="where workers write their images (default: $TMPDIR)")
    parser.add_argument("--json", type=Path, help="also write every run's record here")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when gemimg_async misses a target"
    )
    # The worker and warm-up modes the parent runs in subprocesses.
    hidden = argparse.SUPPRESS
    parser.add_argument("--worker", dest="peer", choices=PEERS, help=hidden)
    parser.add_argument("--warm", action="store_true", help=hidden)
    parser.add_argument("--format", choices=FORMATS, help=hidden)
    parser.add_argument("--in-flight-worker", dest="worker_in_flight", type=int, help=hidden)
    parser.add_argument("--relay", help=hidden)
    parser.add_argument("--sha256", help=hidden)
    return parser


def _defaults(args: argparse.Namespace) -> None:
    quick = args.quick
    args.peers = args.peers or ([*PEERS[:3], "naive"] if quick else list(PEERS))
    args.formats = args.formats or list(FORMATS)
    args.in_flight = args.in_flight or ([4] if quick else [16])
    if args.slope is None:
        args.slope = [] if quick else [4, 16, 32]
    args.repeat = args.repeat or (1 if quick else 3)
    model = args.model or ("standard" if quick else "4k")
    args.model_name = MODELS.get(model.lower(), model)


def orchestrate(args: argparse.Namespace) -> int:
    _defaults(args)
    cases = plan(args)
    began = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    runs: dict[Case, list[dict[str, Any]]] = {case: [] for case in cases}
    context: dict[str, Any] = {"revision": _revision(), "load_before": os.getloadavg()[0]}
    with fake_relay(args.latency, args.style) as relay:
        progress(f"fake relay at {relay}; warming its cache ({args.model_name}, {args.size})")
        hashes = run_warm(args, relay)
        sha256 = next(iter(hashes.values()))["sha256"]
        context["image_bytes"] = next(iter(hashes.values()))["bytes"]
        total = len(cases) * args.repeat
        for round_ in range(args.repeat):  # rounds, so that a change of load hits every case
            for number, case in enumerate(cases, 1):
                done = round_ * len(cases) + number
                name = f"{case.peer} {case.format} x{case.in_flight}"
                progress(f"({done}/{total}) {name}")
                record = run_case(args, relay, case, sha256)
                runs[case].append(record)
                progress("    " + _summary(record))
    context["load_after"] = os.getloadavg()[0]
    if args.json:
        flat = [record for case in cases for record in runs[case]]
        args.json.write_text(json.dumps({"context": context, "runs": flat}, indent=1) + "\n")
    results = {case: median_record(records) for case, records in runs.items()}
    text, met = report(args, results, context)
    print(text)
    progress("done")
    failed = not all(record.get("ok") for record in results.values())
    return 1 if failed or (args.check and not met) else 0


def _summary(record: dict[str, Any]) -> str:
    if not record.get("ok"):
        return f"FAILED: {record.get('error') or 'files differ from the relay PNG'}"
    text = (
        f"peak {_mb(record['peak_rss_kib']):.0f} MB, wall {record['wall_s']:.2f} s, "
        f"worst stall {record['worst_stall_ms']:.1f} ms "
        f"({record['worst_stall_own_ms']:.1f} ms excl. CPU wait)"
    )
    hwm = record.get("vm_hwm_kib")
    if hwm and abs(hwm - record["peak_rss_kib"]) > RSS_DISAGREEMENT * hwm:
        text += f"; ru_maxrss {record['peak_rss_kib']} KiB but VmHWM {hwm} KiB"
    return text


RSS_DISAGREEMENT = 0.05
"""Warn when ru_maxrss and VmHWM differ by more than this fraction."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.peer:
        args.in_flight = args.worker_in_flight
        return worker(args)
    if args.warm:
        return warm(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
