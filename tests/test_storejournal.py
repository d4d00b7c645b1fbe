"""A batch whose output is object storage (`_storejournal`, `_batchout`), against moto's S3 server
and the fake relay on 127.0.0.1: every image a whole object under its name, the manifest and the
send log as append-only objects of the shard, a rerun that skips what is saved, and a job in
flight when a run died recorded outcome_unknown rather than paid for again."""

import json

import anyio
import pytest

from gemimg_async import ConfigurationError, ImageRequest, run_batch
from gemimg_async._merged import read_status
from gemimg_async._objlock import ObjectLock
from gemimg_async._objstore import open_store
from gemimg_async._sentjob import SentJob
from gemimg_async._shards import Shard
from gemimg_async._storejournal import StoreJournal
from helpers import (
    PNG_SIGNATURE,
    jsonl,
    slow_client,
    wait_for,
    write_jobs,
)

pytestmark = pytest.mark.anyio

SENT_LOG = ".manifest-sent.jsonl"


def three_jobs(tmp_path):
    return write_jobs(
        tmp_path,
        "jobs.jsonl",
        jsonl(
            {"prompt": "a fox", "id": "fox"},
            {"prompt": "two cats", "id": "cats", "n": 2, "response_format": "b64_json"},
            {"prompt": "an owl", "id": "owl", "response_format": "url"},
        ),
    )


async def objects(s3: str) -> dict[str, bytes]:
    store = open_store(s3)
    return {
        name: await store.run(store.fs.cat_file, store.path(name)) for name in await store.images()
    }


async def test_a_batch_into_s3_puts_whole_images_and_a_manifest_there(relay, client, s3, tmp_path):
    """Each job's images are whole objects `{id}_{i}.png` beside the manifest's log objects; the
    status of the store says every job saved; the send log is cleared, no temporary left."""
    summary = await run_batch(client, three_jobs(tmp_path), s3)
    assert (summary.saved, summary.images, summary.ok) == (3, 4, True)
    found = await objects(s3)
    assert sorted(found) == ["cats_0.png", "cats_1.png", "fox_0.png", "owl_0.png"]
    for data in found.values():
        assert data.startswith(PNG_SIGNATURE)
        assert data.endswith(b"IEND\xaeB`\x82")
    store = open_store(s3)
    assert await store.logs() == ["manifest.jsonl"]
    lines = [json.loads(line) for line in (await store.read_log("manifest.jsonl")).splitlines()]
    assert {line["id"]: line["paths"] for line in lines} == {
        "fox": ["fox_0.png"],
        "cats": ["cats_0.png", "cats_1.png"],
        "owl": ["owl_0.png"],
    }
    everything = await store.run(store.fs.find, store.root, None, True)
    assert not [name for name in everything if ".gemimg-" in name]
    status = await read_status(s3)
    assert (status.jobs, status.saved, status.duplicates) == (3, 3, ())


async def test_a_rerun_from_the_store_skips_what_is_saved(relay, client, s3, tmp_path):
    """Run twice: the second run sends nothing (the store's manifest says every job is saved)."""
    jobs = three_jobs(tmp_path)
    await run_batch(client, jobs, s3)
    again = await run_batch(client, jobs, s3)
    assert again.skipped == 3
    assert len(relay.requests) == 3


async def test_the_send_log_is_in_the_store_before_the_post(relay, s3, tmp_path):
    """While a job's request is at the relay, its line is in the store's send log already."""
    jobs = write_jobs(tmp_path, "jobs.jsonl", jsonl({"prompt": "a slow fox", "id": "fox"}))
    store = open_store(s3)
    seen = {}
    async with slow_client(0.5, 1) as (slow_relay, client), anyio.create_task_group() as group:
        group.start_soon(run_batch, client, jobs, s3)
        await wait_for(lambda: slow_relay.in_flight == 1)
        seen["log"] = await store.read_log(SENT_LOG)
    assert [json.loads(line)["id"] for line in seen["log"].splitlines()] == ["fox"]
    assert await store.read_log(SENT_LOG) == b""  # cleared once the job has its line


async def test_a_job_a_dead_run_sent_is_outcome_unknown_not_paid_again(relay, client, s3, tmp_path):
    """A send-log line with no manifest line after it (a run killed mid-request, anywhere): the
    next run records that job outcome_unknown and sends only the others."""
    store = open_store(s3)
    fox = ImageRequest("a fox", id="fox")
    await store.append(SENT_LOG, SentJob.of(fox, started=1.0).to_line())
    summary = await run_batch(client, three_jobs(tmp_path), s3)
    assert sorted(request.prompt for request in relay.requests) == ["an owl", "two cats"]
    assert summary.saved == 2
    status = await read_status(s3)
    assert (status.counts["outcome_unknown"], status.saved, status.jobs) == (1, 2, 3)


async def test_a_shard_held_by_a_live_run_is_refused(relay, client, s3, tmp_path):
    """Another run holding the shard's lock: ConfigurationError before anything is sent."""
    await ObjectLock(open_store(s3), ".manifest.1-of-2.lock").acquire()
    with pytest.raises(ConfigurationError, match="holds"):
        await run_batch(client, three_jobs(tmp_path), s3, shard=Shard(1, 2))
    assert relay.requests == []


async def test_a_lock_taken_over_is_told_and_the_run_halts(s3):
    """A run that stalled past its lock's TTL while another took the shard over is told so by
    its renewal (the batch then takes no new job)."""
    store = open_store(s3)
    journal = await StoreJournal.open(store, Shard(1, 2), ttl=0.3)
    await anyio.sleep(0.4)  # expired: the next run takes over
    await ObjectLock(store, ".manifest.1-of-2.lock").acquire()
    told: list[str] = []
    with anyio.fail_after(30):
        await journal.keep_lock(told.append)
    assert "took over" in told[0]
