"""Peak memory, wall time and event-loop stalls of a 4K image streamed up to S3, side by side.

    python benchmarks/bench_upload.py            # a 4K 16:9 noise PNG (~50 MB), 3 runs per peer
    python benchmarks/bench_upload.py --quick    # a smoke run (a 12 MB image, 1 run)

The parent starts moto's S3-compatible server (`moto[server]`) in a process of its own on
127.0.0.1, then runs each peer in a fresh worker process, which makes the image and its chunks,
records its RSS and resets its peak (Linux's VmHWM), runs a loop-stall probe beside the upload,
and prints one JSON line with the peak RSS over that baseline; the parent checks the object
against the image and prints the table.

Peers (the image arrives as 64 KiB chunks, as a relay's answer does):
  gemimg_async  FsspecStore.open_image(): 5 MiB multipart parts, each sent from a worker thread
  naive         the chunks joined in memory, then s3fs `pipe_file` (one PUT, from a thread)
  batch         the whole batch path: `run_batch(client, [one job], "s3://...")` against the fake
                relay (its own process, noise PNGs, b64_json): the answer decoded as it streams
                into an UploadSink, the manifest and send log appended as objects
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
CHUNK = 64 * 1024
MiB = 1024 * 1024
PEERS = ("gemimg_async", "naive", "batch")
ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def image(quick: bool) -> bytes:
    from gemimg_async.testing import _images  # noqa: PLC0415 - the worker imports it too

    return _images._noise_png(2048, 2048) if quick else _images._noise_png(5504, 3072)  # noqa: SLF001


def status(field: str) -> int:
    """`VmRSS` (now) or `VmHWM` (the peak since the last reset) of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    """Start VmHWM afresh from the RSS now (Linux): making the image peaked higher."""
    Path("/proc/self/clear_refs").write_text("5")


async def batch_worker(url: str, relay: str, quick: bool) -> dict:
    """One 4K job (2K with --quick) through `run_batch` into the store at `url`."""
    sys.path.insert(0, str(HERE))
    from _loopstall import StallProbe  # noqa: PLC0415
    from gemimg_async import Client, ImageRequest, Model, run_batch  # noqa: PLC0415
    from gemimg_async._objstore import open_store  # noqa: PLC0415

    model = Model.RES_2K if quick else Model.RES_4K
    job = ImageRequest("a storm", id="image", model=model, size="16:9", response_format="b64_json")
    await open_store(url).check()  # the filesystem's session made before the baseline
    async with Client("sk-test", relay) as client:  # the fake relay's default key
        base = status("VmRSS")
        reset_peak()
        began = time.perf_counter()
        async with StallProbe() as probe:
            summary = await run_batch(client, [job], url)
        wall = time.perf_counter() - began
    assert summary.saved == 1, summary
    return {
        "peer": "batch",
        "extra_rss": max(status("VmHWM") - base, 0),
        "wall": wall,
        "stall": probe.worst,
        "stall_own": probe.worst_own,
    }


async def worker(peer: str, url: str, quick: bool) -> dict:
    sys.path.insert(0, str(HERE))
    import anyio.to_thread  # noqa: PLC0415

    from _loopstall import StallProbe  # noqa: PLC0415
    from gemimg_async._objstore import open_store  # noqa: PLC0415

    data = image(quick)
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]  # held by both peers
    store = open_store(url)
    await store.check()  # the filesystem's session made before the baseline
    base = status("VmRSS")
    reset_peak()
    began = time.perf_counter()
    async with StallProbe() as probe:
        if peer == "gemimg_async":
            upload = await store.open_image("image_0.png")
            for chunk in chunks:
                await upload.write(chunk)
                await asyncio.sleep(0)  # a relay's chunks arrive one by one
            await upload.commit()
        else:
            gathered = bytearray()
            for chunk in chunks:
                gathered += chunk
                await asyncio.sleep(0)
            await anyio.to_thread.run_sync(
                store.fs.pipe_file, f"{store.root}/image_0.png", gathered
            )
    wall = time.perf_counter() - began
    peak = status("VmHWM")
    return {
        "peer": peer,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "extra_rss": max(peak - base, 0),
        "wall": wall,
        "stall": probe.worst,
        "stall_own": probe.worst_own,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=out,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.1)
        else:
            return process, f"http://127.0.0.1:{port}"
    process.kill()
    raise SystemExit(f"moto's server did not start: {log.read_text()[-2000:]}")


def start_relay(url_file: Path) -> tuple[subprocess.Popen, str]:
    """The fake relay (noise PNGs) in its own process, and its URL."""
    command = [sys.executable, "-m", "gemimg_async", "fake-server", "--port", "0"]
    command += ["--style", "noise", "--url-file", str(url_file)]
    relay = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (url_file.exists() and url_file.read_text().strip()):
        if relay.poll() is not None or time.monotonic() > deadline:
            relay.kill()
            raise SystemExit("the fake relay did not start")
        time.sleep(0.05)
    return relay, url_file.read_text().strip()


def check_object(fs: object, path: str, row: dict) -> None:
    """The object is the worker's image (its sha256), or for the batch the relay's: a whole PNG."""
    got = fs.cat_file(path)  # type: ignore[attr-defined]
    if row["peer"] == "batch":
        assert got.startswith(b"\x89PNG")
        assert got.endswith(b"IEND\xaeB`\x82")
        row["bytes"] = len(got)
    else:
        assert hashlib.sha256(got).hexdigest() == row["sha256"], f"{row['peer']}: corrupt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "batch":
        print(json.dumps(asyncio.run(batch_worker(args.url, args.relay, args.quick))))
        return
    if args.worker:
        print(json.dumps(asyncio.run(worker(args.worker, args.url, args.quick))))
        return
    runs = args.runs or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory() as tmp:
        process, endpoint = start_moto(Path(tmp) / "moto.log")
        env = {**os.environ, **ENV, "AWS_ENDPOINT_URL": endpoint}
        relay = start_relay(Path(tmp) / "relay-url")
        try:
            import s3fs  # noqa: PLC0415

            os.environ.update(env)
            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            fs.mkdir("bench")
            rows = []
            for run in range(runs):
                for peer in PEERS:
                    url = f"s3://bench/{peer}-{run}"
                    done = subprocess.run(
                        [sys.executable, __file__, "--worker", peer, "--url", url]
                        + ["--relay", relay[1]]
                        + (["--quick"] if args.quick else []),
                        capture_output=True,
                        text=True,
                        env=env,
                        check=False,
                    )
                    if done.returncode:
                        raise SystemExit(f"{peer} failed:\n{done.stderr[-3000:]}")
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                    check_object(fs, f"bench/{peer}-{run}/image_0.png", row)
                    rows.append(row)
        finally:
            relay[0].terminate()
            relay[0].wait()
            process.terminate()
            process.wait()
    size = rows[0]["bytes"]
    print(f"one {size / 1e6:.1f} MB PNG in 64 KiB chunks to S3 (moto on 127.0.0.1), {runs} run(s)")
    print(f"{'peer':<14}{'extra RSS (max)':>16}{'wall (median)':>15}{'stall (worst, own)':>21}")
    for peer in PEERS:
        mine = [r for r in rows if r["peer"] == peer]
        extra = max(r["extra_rss"] for r in mine)
        wall = sorted(r["wall"] for r in mine)[len(mine) // 2]
        stall = max(r["stall_own"] for r in mine) * 1000
        print(f"{peer:<14}{extra / MiB:>13.1f} MiB{wall:>13.2f} s{stall:>18.1f} ms")
    batch = max(r["bytes"] for r in rows if r["peer"] == "batch")
    print(f"(batch: the relay's own {batch / 1e6:.1f} MB PNG, sent as b64_json, through run_batch)")


if __name__ == "__main__":
    main()
