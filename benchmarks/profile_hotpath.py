"""Where gemimg_async's CPU goes per request: py-spy (and optionally strace) on compare.py's cases.

    python benchmarks/profile_hotpath.py                    # four cases, py-spy, top 25 functions
    python benchmarks/profile_hotpath.py --strace           # also count system calls per request
    python benchmarks/profile_hotpath.py --cases memory-64 --top 40 --keep /tmp/prof

Each case is one `compare.py --worker` process (the same code, requests and relay as the
benchmark's), run under `py-spy record --format raw --threads --nonblocking` against a fake
relay in its own process. py-spy leaves idle threads out, so a function's samples divided by the
rate and the number of requests is about its CPU per request (a thread blocked in a system call
can count as busy: read the figures as shares, and the worker's `cpu_ms` as the total). The
tables give, for the event-loop thread and for the worker threads, each function's own ("self")
and cumulative ("total") ms per request, then the same by module. With `--strace`, a second run
of the case under `strace -f -c` counts system calls per request (strace slows the process down:
its figures are counts, not times). With `--cprofile`, the main thread under cProfile instead:
exact call counts per request (a coroutine counts once per resumption), but own times inflated
by the profiler, and a blocking system call's own time is wall time (a directory lock waited for
on the loop shows there).
py-spy is not a dependency: `pip install py-spy`.

Cases (compare.py's workloads; the stall probe off, so that its wake-ups are not counted):
  memory-64     2,000 tiny b64_json, 64 in flight, no relay latency, results in memory
  save-64       the same with save_to=
  memory-1024   2,048 at 1,024 in flight, 2 s relay latency, in memory
  save-1024     the same with save_to=
  aiohttp-...   the like-for-like hand-written peers, for comparison (aiohttp-memory-64,
                aiohttp-save-64, aiohttp-save-1024)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench_memory import fake_relay_process
from compare import STYLE, warm

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    name: str
    peer: str
    requests: int
    in_flight: int
    latency: float


CASES = {
    case.name: case
    for case in (
        Case("memory-64", "gemimg_memory", 2000, 64, 0.0),
        Case("save-64", "gemimg_save_to", 2000, 64, 0.0),
        Case("memory-1024", "gemimg_memory", 2048, 1024, 2.0),
        Case("save-1024", "gemimg_save_to", 2048, 1024, 2.0),
        Case("aiohttp-memory-64", "aiohttp_memory", 2000, 64, 0.0),
        Case("aiohttp-save-64", "aiohttp_crash_safe", 2000, 64, 0.0),
        Case("aiohttp-save-1024", "aiohttp_crash_safe", 2048, 1024, 2.0),
    )
}
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Relay:
    url: str
    pid: int
    sha256: str
    image_bytes: int


@contextlib.contextmanager
def relays(latencies: set[float]) -> Iterator[dict[float, Relay]]:
    with contextlib.ExitStack() as stack:
        started = {}
        for latency in sorted(latencies):
            url, pid = stack.enter_context(fake_relay_process(latency, STYLE))
            png = warm(url)
            started[latency] = Relay(url, pid, hashlib.sha256(png).hexdigest(), len(png))
        yield started


def worker_command(case: Case, relay: Relay, api: str) -> list[str]:
    return [
        sys.executable,
        str(HERE / "compare.py"),
        "--worker",
        case.peer,
        "--workload",
        case.name,
        "--relay",
        relay.url,
        "--relay-pid",
        str(relay.pid),
        "--format",
        "b64_json",
        "--requests-worker",
        str(case.requests),
        "--in-flight-worker",
        str(case.in_flight),
        "--sha256",
        relay.sha256,
        "--image-bytes",
        str(relay.image_bytes),
        "--gemimg-api",
        api,
        "--probe-ms",
        "0",
    ]


def short(frame: str) -> tuple[str, str]:
    """(function as `module.func`, module) for a py-spy frame `func (path:line)`."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame, "?"
    path = match["file"]
    parts = Path(path).parts
    for anchor in ("site-packages", "lib", "python3.11"):
        if anchor in parts:
            parts = parts[len(parts) - parts[::-1].index(anchor) :]
            break
    if "gemimg_async" in parts:
        parts = parts[parts.index("gemimg_async") :]
    module = "/".join(parts) or path
    return f"{module}:{match['func']}", module


def read_raw(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    """py-spy's raw output by thread: 'loop' (the main thread inside `asyncio.run`), 'imports'
    (the main thread under an import: paid once per process), 'threads' (every other thread).
    The main thread's other samples (checking the files, cleaning up) are left out."""
    stacks: dict[str, list[tuple[list[str], int]]] = {"loop": [], "imports": [], "threads": []}
    parsed = []
    for line in path.read_text().split("\n"):  # not splitlines: frames may hold \x1c and such
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        head, *frames = stack.split(";")
        tid = re.match(r"thread \((\w+)\)", head)
        parsed.append((tid[1] if tid else head, "MainThread" in head, frames, int(count)))
    main_tids = {tid for tid, is_main, _, _ in parsed if is_main}
    for tid, _, frames, count in parsed:
        if tid not in main_tids:
            stacks["threads"].append((frames, count))
        elif any("_find_and_load" in frame for frame in frames):
            stacks["imports"].append((frames, count))
        elif any("runners.py" in frame for frame in frames):
            stacks["loop"].append((frames, count))
    return stacks


def tables(stacks: list[tuple[list[str], int]], per: float, top: int) -> str:
    """Top functions by self and by total ms per request, and modules by self."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    samples = 0
    for frames, count in stacks:
        samples += count
        if not frames:
            continue
        names = [short(frame) for frame in frames]
        own[names[-1][0]] += count
        modules[names[-1][1]] += count
        for name in {name for name, _ in names}:
            total[name] += count
    lines = [f"{samples * per:.3f} ms/request in all ({samples} samples)", ""]
    for title, counter in (("self", own), ("total", total), ("self, by module", modules)):
        lines.append(f"| {title} ms/request | % | function |")
        lines.append("| ---: | ---: | --- |")
        for name, count in counter.most_common(top):
            lines.append(f"| {count * per:.4f} | {100 * count / max(samples, 1):.1f} | `{name}` |")
        lines.append("")
    return "\n".join(lines)


_COUNTED = (
    "base_events.py:_run_once",
    "get_running_loop",
    "current_task",
    "tasks.py:sleep",
    "_pacing.py",
    "_limits.py",
    "to_thread",
    "run_sync",
    "submit",
)


def cprofile_table(path: Path, requests: int, top: int) -> str:
    """The main thread under cProfile (imports and all): top functions by own time, with calls
    per request, then the calls per request of the functions in `_COUNTED`."""
    stats = pstats.Stats(str(path))
    rows = []
    for (file, line, func), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        name = f"{short(f'{func} ({file}:{line})')[0]}" if file != "~" else func
        rows.append((own, cumulative, calls, name))
    rows.sort(reverse=True)
    per = 1e6 / requests
    lines = ["| own us/request | cumulative us/request | calls/request | function |"]
    lines.append("| ---: | ---: | ---: | --- |")
    lines += [
        f"| {own * per:.1f} | {cum * per:.1f} | {calls / requests:.2f} | `{name}` |"
        for own, cum, calls, name in rows[:top]
    ]
    lines += ["", "| calls/request | own us/request | function |", "| ---: | ---: | --- |"]
    counted = sorted(
        (row for row in rows if any(key in row[3] for key in _COUNTED)), key=lambda r: -r[2]
    )
    lines += [f"| {c / requests:.2f} | {o * per:.1f} | `{n}` |" for o, _, c, n in counted[:top]]
    return "\n".join(lines) + "\n"


def strace_counts(command: list[str], requests: int, out: Path) -> str:
    log = out / "strace.txt"
    subprocess.run(
        ["strace", "-f", "-c", "-o", str(log), *command],
        check=False,
        capture_output=True,
        timeout=900,
    )
    rows = []
    for line in log.read_text().splitlines():
        cells = line.split()
        name = cells[-1] if cells else ""
        if len(cells) >= 5 and name.isidentifier() and name != "total" and cells[3].isdigit():
            rows.append((int(cells[3]), name))
    rows.sort(reverse=True)
    total = sum(calls for calls, _ in rows)
    lines = [f"system calls: {total / requests:.1f} per request (over the whole process: imports"]
    lines += ["and the file checks included)", "", "| per request | call |"]
    lines.append("| ---: | --- |")
    lines += [f"| {calls / requests:.2f} | {name} |" for calls, name in rows[:15]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    gemimg = [name for name in CASES if not name.startswith("aiohttp")]
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=gemimg)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second (500)")
    parser.add_argument("--top", type=int, default=25, help="rows per table (25)")
    parser.add_argument("--strace", action="store_true", help="also count system calls")
    parser.add_argument(
        "--cprofile", action="store_true", help="cProfile the main thread instead of py-spy"
    )
    parser.add_argument("--gemimg-api", choices=("map", "send"), default="map")
    parser.add_argument("--keep", type=Path, help="keep py-spy's raw files in this folder")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cases = [CASES[name] for name in args.cases]
    with (
        relays({case.latency for case in cases}) as by_latency,
        tempfile.TemporaryDirectory(prefix="profile-") as scratch,
    ):
        out = args.keep or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        for case in cases:
            command = worker_command(case, by_latency[case.latency], args.gemimg_api)
            raw = out / f"{case.name}.txt"
            prof = out / f"{case.name}.prof"
            if args.cprofile:
                wrapped = [command[0], "-m", "cProfile", "-o", str(prof), *command[1:]]
            else:
                wrapped = [py_spy, "record", "--format", "raw", "--threads", "--nonblocking"]
                wrapped += ["-r", str(args.rate), "-o", str(raw), "--", *command]
            done = subprocess.run(
                wrapped,
                check=False,
                capture_output=True,
                text=True,
                timeout=900,
            )
            record = [line for line in done.stdout.splitlines() if line.startswith("{")]
            record = record[-1:] or [done.stderr[-500:]]
            print(f"## {case.name}: {case.requests} at {case.in_flight} in flight\n")
            print(f"worker: {record[0]}\n")
            if args.cprofile:
                print(cprofile_table(prof, case.requests, args.top))
            else:
                per = 1000 / args.rate / case.requests
                for kind, stacks in read_raw(raw).items():
                    print(f"### {kind}\n\n{tables(stacks, per, args.top)}")
            if args.strace:
                print(strace_counts(command, case.requests, out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
