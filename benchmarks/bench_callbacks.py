"""What holds the event loop while 4K images stream in through each dialect: the longest callback.

    python benchmarks/bench_callbacks.py            # 16 x 4K 16:9 per dialect (a minute or two)
    python benchmarks/bench_callbacks.py --quick    # a smoke run: 2 x standard, images only

Wall-clock stalls mix what the library does with what the machine does (other processes on the
cores, CPython's garbage collector). This separates them. Each dialect runs in a fresh worker
process against the fake relay (its own process; chat answers hold the image in Markdown text,
the hard case), once as it is and once after `gc.freeze()`. The worker times the CPU of its own
thread (`time.thread_time`) across every event-loop callback and every garbage collection, after
a warm-up generation, and reports the longest of each: the longest callback is the longest the
loop was held by work of its own, whatever the load; a full (generation 2) collection runs inside
some callback and is included in it.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.events
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench_memory import fake_relay

API_KEY = "sk-test"
DIALECTS = ("images", "chat", "gemini")
GOAL_MS = 20.0


def _timed_callbacks() -> list[float]:
    """Patch the loop's Handle to record the thread CPU seconds of each callback."""
    spent: list[float] = []
    run = asyncio.events.Handle._run  # noqa: SLF001 - the one place every callback goes through

    def timed(handle: asyncio.events.Handle) -> None:
        start = time.thread_time()
        run(handle)
        spent.append(time.thread_time() - start)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign] # noqa: SLF001
    return spent


def _timed_collections() -> list[tuple[int, float]]:
    spent: list[tuple[int, float]] = []
    start = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            start[0] = time.thread_time()
        else:
            spent.append((info["generation"], time.thread_time() - start[0]))

    gc.callbacks.append(timed)
    return spent


async def _generate(args: argparse.Namespace) -> dict[str, Any]:
    import gemimg_async as gi  # noqa: PLC0415 - the worker's own import

    call = {"standard": "generate", "4k": "generate_4k"}[args.model]
    async with gi.Client(API_KEY, args.relay, dialect=args.dialect) as client:
        await getattr(client, call)("warm-up", size="16:9", save_to=args.out)
        if args.freeze:
            gc.freeze()
        callbacks, collections = _timed_callbacks(), _timed_collections()
        results = await asyncio.gather(
            *(
                getattr(client, call)(f"prompt {i}", size="16:9", save_to=args.out)
                for i in range(args.in_flight)
            )
        )
    full = [spent for generation, spent in collections if generation == 2]
    return {
        "dialect": args.dialect,
        "freeze": args.freeze,
        "images": sum(len(result.images) for result in results),
        "callbacks": len(callbacks),
        "longest_callback_ms": max(callbacks) * 1000,
        "full_collections": len(full),
        "longest_full_collection_ms": max(full, default=0.0) * 1000,
    }


def _worker(args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(_generate(args))))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    parser.add_argument("--dialect", default="images", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="4k", help=argparse.SUPPRESS)
    parser.add_argument("--freeze", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    dialects, model, in_flight = (
        (("images",), "standard", 2) if args.quick else (DIALECTS, "4k", args.in_flight)
    )
    rows = []
    with fake_relay(0 if args.quick else 1, "noise") as relay, tempfile.TemporaryDirectory() as out:
        for dialect in dialects:
            for freeze in (False, True):
                command = [sys.executable, __file__, "--worker", "--relay", relay, "--out", out]
                command += ["--dialect", dialect, "--model", model, "--in-flight", str(in_flight)]
                command += ["--freeze"] if freeze else []
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                rows.append(json.loads(done.stdout.splitlines()[-1]))
    load = " ".join(f"{figure:.2f}" for figure in os.getloadavg())
    print(f"{in_flight} x {model} 16:9 in flight per dialect; load average {load}\n")
    print(
        "| dialect | gc.freeze() | images | callbacks | longest callback CPU ms "
        "| full GCs | longest full GC ms |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['dialect']} | {'yes' if row['freeze'] else 'no'} | {row['images']} "
            f"| {row['callbacks']} | {row['longest_callback_ms']:.1f} "
            f"| {row['full_collections']} | {row['longest_full_collection_ms']:.1f} |"
        )
    frozen = [row for row in rows if row["freeze"]]
    worst = max(row["longest_callback_ms"] for row in frozen)
    verdict = "met" if worst < GOAL_MS else "MISSED"
    print(
        f"\n[{verdict}] longest callback with gc.freeze(): {worst:.1f} ms (goal < {GOAL_MS:g} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
