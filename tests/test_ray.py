"""Sharded batches on a local Ray instance (`ray.init(num_cpus=2)`, on 127.0.0.1 only) against the
fake relay: every job done once across the shards, and a worker killed mid-shard resumed by
Ray's retry from its manifest without paying twice. Marked `ray`: skip with `-m "not ray"`."""

import json
import os
import signal
import zlib
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from gemimg_async import ImageRequest
from gemimg_async._objstore import open_store
from gemimg_async._shards import Shard
from gemimg_async.ray import ShardsFailedError, run_sharded, sharded_status
from gemimg_async.testing import FakeRelay
from helpers import API_KEY, PNG_SIGNATURE, png_chunks, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.anyio]

RAY_MISSING = (
    "ray cannot be imported: pip install -e '.[ray]', or skip these tests with -m 'not ray'"
)
# Ray on loopback only: its own "no cluster" switch keeps every address 127.0.0.1 (else it binds
# the machine's outward address); no usage reports.
RAY_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module: two CPUs, no dashboard."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in RAY_ENVIRONMENT.items():
            env.setenv(name, value)
        ray = pytest.importorskip("ray", reason=RAY_MISSING, exc_type=ImportError)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()


def write_jobs(path: Path, count: int) -> Path:
    lines = [
        json.dumps({"id": f"job-{i:03d}", "prompt": f"a lighthouse, {i}"}) for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def options(relay: FakeRelay, **more) -> dict:
    return {"api_key": API_KEY, "base_url": relay.url, **more}


async def test_every_job_is_done_once_across_the_shards(ray_instance, relay, tmp_path):
    """Twelve jobs in three shards on Ray, into one folder: twelve requests, twelve images, each
    job in exactly one shard's manifest, and the merged status says so."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", 12)
    out = tmp_path / "out"
    status = await anyio.to_thread.run_sync(
        lambda: run_sharded(jobs, out, shards=3, client_options=options(relay))
    )
    assert (status.jobs, status.saved, status.left, status.duplicates) == (12, 12, 0, ())
    assert len(relay.requests) == 12
    assert sorted(status.manifests) == [Shard(k, 3).manifest_name for k in (1, 2, 3)]
    for k in (1, 2, 3):
        lines = (out / Shard(k, 3).manifest_name).read_text().splitlines()
        owned = [f"job-{i:03d}" for i in range(12) if Shard(k, 3).owns(f"job-{i:03d}")]
        assert sorted(json.loads(line)["id"] for line in lines) == owned
    images = sorted(out.glob("*.png"))
    assert [p.name for p in images] == [f"job-{i:03d}_0.png" for i in range(12)]
    assert all(path.read_bytes().startswith(PNG_SIGNATURE) for path in images)
    again = await anyio.to_thread.run_sync(
        lambda: run_sharded(jobs, out, shards=3, client_options=options(relay))
    )
    assert again == status
    assert len(relay.requests) == 12  # a second run has nothing left to send


async def test_requests_given_as_values_are_sharded_in_the_driver(ray_instance, relay, tmp_path):
    """Requests (not a file) are split before they travel: each task gets its shard's."""
    requests = [ImageRequest(f"a cat, {i}", id=f"cat-{i}") for i in range(6)]
    status = await anyio.to_thread.run_sync(
        lambda: run_sharded(requests, tmp_path / "out", shards=2, client_options=options(relay))
    )
    assert (status.jobs, status.saved, status.left) == (6, 6, 0)
    assert len(relay.requests) == 6


def ray_task_pids() -> list[int]:
    """The worker processes running a shard now (Ray titles them `ray::run_shard`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::run_shard"):
                pids.append(int(entry.name))
    return pids


async def test_a_shard_killed_mid_run_resumes_without_paying_twice(ray_instance, tmp_path):
    """A worker killed (SIGKILL) with a request in flight: Ray runs its shard again, which
    records that job outcome_unknown from the send log and does the rest; no job is sent
    twice, and every job is in the merged status once."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", 8)
    out = tmp_path / "out"
    async with FakeRelay(api_keys=frozenset({API_KEY}), latency=0.4) as relay:
        async with anyio.create_task_group() as group:
            result = {}

            async def run() -> None:
                result["status"] = await anyio.to_thread.run_sync(
                    lambda: run_sharded(
                        jobs, out, shards=2, client_options=options(relay, max_concurrency=1)
                    )
                )

            group.start_soon(run)
            # both shards (3 and 5 jobs) with a request in flight, one job done or more
            await wait_for(lambda: relay.in_flight == 2 and len(relay.requests) >= 3)
            os.kill(ray_task_pids()[0], signal.SIGKILL)
        status = result["status"]
    assert len(relay.requests) == 8  # each job sent once: the killed one was not sent again
    assert (status.jobs, status.left, status.duplicates) == (8, 0, ())
    assert status.counts["outcome_unknown"] == 1
    assert status.saved == 7


def test_a_shard_that_fails_for_good_is_reported_with_the_status(ray_instance, tmp_path):
    """A shard whose task cannot run (no relay) fails; the others' work is in the status."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", 4)
    with pytest.raises(ShardsFailedError, match="2 shard") as caught:
        run_sharded(
            jobs,
            tmp_path / "out",
            shards=2,
            client_options={"api_key": API_KEY, "base_url": None},
            task_options={"max_retries": 0},
        )
    assert caught.value.status.left == 4
    assert "ConfigurationError" in str(caught.value)
    assert API_KEY not in str(caught.value)


async def test_a_sharded_batch_into_s3_does_every_job_once(ray_instance, relay, s3, tmp_path):
    """Twelve jobs in three shards on Ray into the local S3 server: twelve requests, each job
    once in the merged status, every object a whole PNG (its pixels inflate), each shard's
    manifest kept as objects in the store."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", 12)
    env = {name: value for name, value in os.environ.items() if name.startswith("AWS_")}
    status = await anyio.to_thread.run_sync(
        lambda: run_sharded(
            jobs,
            s3,
            shards=3,
            client_options=options(relay),
            task_options={"runtime_env": {"env_vars": env}},
        )
    )
    assert (status.jobs, status.saved, status.left, status.duplicates) == (12, 12, 0, ())
    assert len(relay.requests) == 12
    store = open_store(s3)
    assert await store.logs() == [Shard(k, 3).manifest_name for k in (1, 2, 3)]
    names = await store.images()
    assert names == [f"job-{i:03d}_0.png" for i in range(12)]
    for name in names:
        data = await store.run(store.fs.cat_file, store.path(name))
        chunks = png_chunks(data)
        assert chunks[-1][0] == b"IEND"
        zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))


def test_sharded_status_without_a_run(tmp_path):
    """The status of shards that have not run: nothing recorded, everything left."""
    status = sharded_status(tmp_path / "out", jobs=write_jobs(tmp_path / "jobs.jsonl", 5))
    assert (status.jobs, status.left, status.saved) == (5, 5, 0)
