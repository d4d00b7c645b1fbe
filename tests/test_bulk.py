"""Running a batch (`_bulk`): every job saved and recorded, re-runs that pay for nothing twice,
stopping and aborting; against the fake relay over real sockets on 127.0.0.1.
"""

import errno
import json
import os

import anyio
import pytest

from gemimg_async import (
    MANIFEST_NAME,
    BatchRun,
    BatchSummary,
    Client,
    ConfigurationError,
    ImageRequest,
    JobDefaults,
    ManifestEntry,
    ValidationError,
    content_id,
    run_batch,
)
from gemimg_async._journal import Journal, SentJob
from gemimg_async._shards import Shard
from gemimg_async.testing import FakeClock, Fault
from helpers import (
    API_KEY,
    MANIFEST_KEYS,
    is_complete_png,
    jsonl,
    latest,
    manifest_lines,
    prompts_sent,
    slow_client,
    wait_for,
    write_jobs,
)

pytestmark = pytest.mark.anyio


# --- running a batch ---------------------------------------------------------------------------


async def test_a_batch_saves_every_job_and_records_each_in_the_manifest(
    relay, client, tmp_path, out
):
    """Each job's images land as OUT/{id}_{i}.png and its manifest line lists them."""
    jobs = write_jobs(
        tmp_path,
        "jobs.jsonl",
        jsonl(
            {"prompt": "a fox", "id": "fox"},
            {"prompt": "two cats", "id": "cats", "n": 2, "response_format": "b64_json"},
            {"prompt": "a wide harbour", "size": "16:9"},
        ),
    )
    summary = await run_batch(client, jobs, out)
    assert (summary.saved, summary.total, summary.images, summary.skipped) == (3, 3, 4, 0)
    assert summary.ok
    assert summary.manifest == out / MANIFEST_NAME
    lines = manifest_lines(out)
    assert len(lines) == 3
    assert all(set(line) >= MANIFEST_KEYS and line["status"] == "saved" for line in lines)
    by_id = {line["id"]: line for line in lines}
    assert by_id["fox"]["paths"] == ["fox_0.png"]
    assert by_id["cats"]["paths"] == ["cats_0.png", "cats_1.png"]
    keys = {request.idempotency_key for request in relay.requests}
    assert all(len(line["idempotency_keys"]) == 1 for line in lines)
    assert {line["idempotency_keys"][0] for line in lines} == keys
    for line in lines:
        assert line["error"] is None
        assert line["attempts"] == 1
        assert len(line["request_ids"]) == 1
        assert all(is_complete_png(out / name) for name in line["paths"])
    assert not (out / ".manifest-sent.jsonl").read_bytes()


async def test_jobs_may_be_an_iterable_of_requests(relay, client, out):
    """run_batch takes ImageRequest values too; those without an id get their content id."""
    requests = [ImageRequest("a fox"), ImageRequest("a fox"), ImageRequest("a cat", id="cat")]
    summary = await run_batch(client, iter(requests), out)
    base = content_id(requests[0])
    assert set(latest(out)) == {base, f"{base}-2", "cat"}
    assert summary.ok


async def test_faults_mid_batch_end_each_job_in_its_own_state(relay, clock, tmp_path, out):
    """Relay faults in the middle of a batch give failed, refused and outcome_unknown lines;
    the other jobs are saved all the same."""
    relay.script(
        Fault.delay(0),  # job 0: fine
        Fault.status(400, message="bad request"),  # job 1: failed
        Fault.refusal(),  # job 2: refused
        Fault.truncate(0.3),  # job 3: sent, answer lost: outcome_unknown
        Fault.server_error(500),  # job 4: retried once, then saved
        Fault.delay(0),
        Fault.status(400, message="Your request was blocked by our safety system"),  # job 5
    )
    jobs = write_jobs(tmp_path, "jobs.txt", [f"job {i}" for i in range(7)])
    async with Client(API_KEY, relay.url, max_concurrency=1, clock=clock) as client:
        summary = await run_batch(client, jobs, out)
    states = {doc["prompt"]: doc for doc in manifest_lines(out)}
    assert {prompt: doc["status"] for prompt, doc in states.items()} == {
        "job 0": "saved",
        "job 1": "failed",
        "job 2": "refused",
        "job 3": "outcome_unknown",
        "job 4": "saved",
        "job 5": "refused",
        "job 6": "saved",
    }
    assert states["job 1"]["error"].startswith("BadRequestError: HTTP 400: bad request")
    assert states["job 2"]["error"].startswith("RefusalError: ")
    assert states["job 3"]["error"].startswith("OutcomeUnknownError: ")
    assert states["job 4"]["attempts"] == 2
    assert len(states["job 4"]["request_ids"]) == 2
    assert states["job 5"]["error"].startswith("ContentPolicyError: ")
    assert API_KEY not in (out / MANIFEST_NAME).read_text()
    assert (summary.saved, summary.failed, summary.refused, summary.outcome_unknown) == (3, 1, 2, 1)
    assert not summary.ok


# --- re-runs -----------------------------------------------------------------------------------


async def test_a_rerun_skips_saved_jobs_and_sends_failed_ones_again(relay, clock, tmp_path, out):
    """Re-running sends only what did not end saved; outcome_unknown only with retry_unknown."""
    relay.script(Fault.status(400), Fault.refusal(), Fault.truncate(0.3))
    jobs = write_jobs(tmp_path, "jobs.txt", [f"job {i}" for i in range(5)])
    async with Client(API_KEY, relay.url, max_concurrency=1, clock=clock) as client:
        await run_batch(client, jobs, out)
        assert len(relay.requests) == 5
        relay.reset()
        again = await run_batch(client, jobs, out)
        assert sorted(prompts_sent(relay)) == ["job 0", "job 1"]  # failed and refused
        assert (again.saved, again.outcome_unknown, again.skipped) == (4, 1, 3)
        relay.reset()
        final = await run_batch(client, jobs, out, retry_unknown=True)
        assert prompts_sent(relay) == ["job 2"]
        assert final.ok
        relay.reset()
        done = await run_batch(client, jobs, out, retry_unknown=True)
        assert relay.requests == []
        assert (done.saved, done.skipped, done.sent) == (5, 5, 0)
    assert {doc["status"] for doc in latest(out).values()} == {"saved"}


async def test_a_saved_job_whose_images_vanished_is_generated_again(relay, client, tmp_path, out):
    """A job recorded saved is skipped only while its files exist."""
    jobs = write_jobs(
        tmp_path, "jobs.jsonl", jsonl({"prompt": "a", "id": "a"}, {"prompt": "b", "id": "b"})
    )
    await run_batch(client, jobs, out)
    (out / "b_0.png").unlink()
    relay.reset()
    summary = await run_batch(client, jobs, out)
    assert prompts_sent(relay) == ["b"]
    assert summary.ok
    assert (out / "b_0.png").exists()


async def test_an_image_paid_for_but_not_fetched_is_not_paid_for_again(
    relay, client, tmp_path, out
):
    """A job whose generation succeeded but whose URL could not be fetched ends outcome_unknown:
    a plain re-run does not pay for it again; --retry-unknown does, with the same key."""
    relay.script_download(*[Fault.status(502)] * 3)
    jobs = write_jobs(tmp_path, "jobs.jsonl", jsonl({"prompt": "a fox", "id": "fox"}))
    first = await run_batch(client, jobs, out)
    entry = latest(out)["fox"]
    assert (first.outcome_unknown, entry["status"]) == (1, "outcome_unknown")
    assert entry["error"].startswith("DownloadError: ")
    relay.reset()
    await run_batch(client, jobs, out)
    assert relay.requests == []
    await run_batch(client, jobs, out, retry_unknown=True)
    assert [r.idempotency_key for r in relay.requests] == entry["idempotency_keys"]
    assert latest(out)["fox"]["status"] == "saved"


# --- stopping ----------------------------------------------------------------------------------


async def stopped_when(batch: BatchRun, jobs, condition) -> BatchSummary:
    """`batch.run(jobs)`, stopped once `condition` holds; its summary."""
    summary = None

    async def run() -> None:
        nonlocal summary
        summary = await batch.run(jobs)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await wait_for(condition)
        batch.stop()
    assert summary is not None
    return summary


async def test_stop_finishes_what_was_sent_and_sends_nothing_more(tmp_path, out):
    """stop() takes no new job; the requests in flight finish and are recorded, and a re-run
    sends only the rest."""
    jobs = write_jobs(tmp_path, "jobs.txt", [f"job {i}" for i in range(10)])
    async with slow_client(0.3, 2) as (relay, client):
        summary = await stopped_when(BatchRun(client, out), jobs, lambda: relay.in_flight == 2)
        assert summary.interrupted
        assert (summary.saved, summary.total) == (2, 2)
        first = prompts_sent(relay)
        assert len(first) == 2
        assert {doc["prompt"] for doc in manifest_lines(out)} == set(first)
        relay.latency = 0.0
        relay.reset()
        rest = await run_batch(client, jobs, out)
    assert sorted(prompts_sent(relay)) == sorted({f"job {i}" for i in range(10)} - set(first))
    assert rest.ok
    assert rest.skipped == 2


async def test_abort_records_what_was_in_flight_as_outcome_unknown(tmp_path, out):
    """abort() cancels the requests in flight at once and records each as outcome_unknown; a
    re-run sends them again only with retry_unknown."""
    jobs = write_jobs(tmp_path, "jobs.txt", [f"job {i}" for i in range(6)])
    async with slow_client(30.0, 3) as (relay, client):
        abort = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                nonlocal summary
                summary = await run_batch(client, jobs, out, abort=abort)

            summary = None
            tg.start_soon(run)
            await wait_for(lambda: relay.in_flight == 3)
            abort.set()
        assert (summary.outcome_unknown, summary.total) == (3, 3)
        assert summary.interrupted
        lines = manifest_lines(out)
        assert len(lines) == 3
        assert all(line["status"] == "outcome_unknown" for line in lines)
        assert all("may have been billed" in line["error"] for line in lines)
        assert all(line["attempts"] == 1 for line in lines)  # what was sent is recorded
        keys = {line["prompt"]: line["idempotency_keys"] for line in lines}
        assert keys == {r.prompt: [r.idempotency_key] for r in relay.requests}
        sent_before = set(prompts_sent(relay))
        relay.latency = 0.0
        relay.reset()
        rest = await run_batch(client, jobs, out)
        assert set(prompts_sent(relay)) == {f"job {i}" for i in range(6)} - sent_before
        assert (rest.saved, rest.outcome_unknown) == (3, 3)
        relay.reset()
        await run_batch(client, jobs, out, retry_unknown=True)
        assert set(prompts_sent(relay)) == sent_before
        assert {r.prompt: [r.idempotency_key] for r in relay.requests} == keys  # billed once
    assert {doc["status"] for doc in latest(out).values()} == {"saved"}


async def test_stop_event_of_run_batch_stops_taking_jobs(tmp_path, out):
    """run_batch's stop event does what BatchRun.stop() does."""
    jobs = write_jobs(tmp_path, "jobs.txt", [f"job {i}" for i in range(5)])
    stop = anyio.Event()
    stop.set()
    async with slow_client(0.0, 2) as (relay, client):
        summary = await run_batch(client, jobs, out, stop=stop)
    assert summary.interrupted
    assert summary.total <= 2
    assert len(relay.requests) == summary.total


async def test_a_rejected_key_halts_the_batch(relay, clock, tmp_path, out):
    """A 401 stops the batch taking jobs: the key will not work for the next ones either."""
    jobs = write_jobs(tmp_path, "jobs.txt", [f"job {i}" for i in range(20)])
    async with Client("sk-wrong", relay.url, max_concurrency=2, clock=clock) as client:
        summary = await run_batch(client, jobs, out)
    assert summary.halted is not None
    assert "rejected the API key" in summary.halted
    assert not summary.interrupted
    assert len(relay.requests) <= 3
    assert summary.failed == len(relay.requests)
    assert "sk-wrong" not in (out / MANIFEST_NAME).read_text()


async def test_a_full_disk_halts_the_batch(relay, client, tmp_path, out, monkeypatch):
    """When the output folder takes no more, the batch stops taking jobs (each would be paid
    for, then lost) and says why."""
    from gemimg_async import _commit, _sinks  # noqa: PLC0415 - where files are written

    def write(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_sinks._GuardedFile, "write", write)  # images streamed in blocks
    monkeypatch.setattr(_commit, "write_all", write)  # small images, written at once
    jobs = write_jobs(tmp_path, "jobs.txt", [f"job {i}" for i in range(20)])
    async with Client(API_KEY, relay.url, max_concurrency=1, clock=FakeClock()) as one:
        summary = await run_batch(one, jobs, out, defaults=JobDefaults(response_format="b64_json"))
    assert summary.halted is not None
    assert "takes no more" in summary.halted
    assert len(relay.requests) == 1


async def test_a_job_waiting_for_its_rate_slot_at_stop_is_not_sent(relay, tmp_path, out):
    """With `rpm`, a job taken but still waiting for its start is not sent after stop(), nor
    recorded: it never reached the relay, and the next run sends it."""
    jobs = write_jobs(tmp_path, "jobs.txt", ["job 0", "job 1"])
    async with Client(API_KEY, relay.url, rpm=1, max_concurrency=2) as client:
        with anyio.fail_after(30):  # far less than the minute job 1 waits for its start
            summary = await stopped_when(
                BatchRun(client, out),
                jobs,
                lambda: (out / MANIFEST_NAME).exists() and manifest_lines(out),
            )
        assert summary.interrupted
        assert prompts_sent(relay) == ["job 0"]
        assert [line["prompt"] for line in manifest_lines(out)] == ["job 0"]
        assert not (out / ".manifest-sent.jsonl").read_bytes()
    async with Client(API_KEY, relay.url, clock=FakeClock()) as again:
        rest = await run_batch(again, jobs, out)
    assert prompts_sent(relay) == ["job 0", "job 1"]
    assert rest.ok


async def test_a_manifest_without_fingerprints_resumes_as_unchanged(relay, client, tmp_path, out):
    """Jobs saved by a version that kept no fingerprint are skipped as before, never counted
    changed; a changed job held outcome_unknown is redone with a new key only when asked."""
    out.mkdir()
    (out / "fox_0.png").write_bytes(b"png")
    lines = [
        ManifestEntry(id="fox", status="saved", paths=("fox_0.png",), prompt="a fox"),
        ManifestEntry(
            id="cat", status="outcome_unknown", idempotency_keys=("old-key",), fingerprint="x"
        ),
    ]
    (out / MANIFEST_NAME).write_bytes(b"".join(entry.to_line() for entry in lines))
    jobs = [ImageRequest("a fox", id="fox", size="16:9"), ImageRequest("a cat", id="cat")]
    summary = await run_batch(client, jobs, out)
    assert relay.requests == []
    assert (summary.skipped, summary.changed) == (2, 1)
    assert not summary.ok
    summary = await run_batch(client, jobs, out, redo_changed=True)
    assert prompts_sent(relay) == ["a cat"]
    assert relay.requests[0].idempotency_key != "old-key"  # another request: another key
    assert summary.ok


# --- shards ------------------------------------------------------------------------------------


def shard_ids(ids, shard):
    return sorted(job_id for job_id in ids if shard.owns(job_id))


def read_ids(path):
    return sorted({json.loads(line)["id"] for line in path.read_text().splitlines()})


async def test_shards_share_one_folder_each_with_its_own_manifest(relay, client, tmp_path, out):
    """Three shards run into one folder: each sends and records only its jobs, in its own
    manifest and send log; together every job once."""
    ids = [f"job-{i:02d}" for i in range(15)]
    jobs = write_jobs(tmp_path, "jobs.jsonl", jsonl(*({"prompt": i, "id": i} for i in ids)))
    sent = 0
    for k in (1, 2, 3):
        shard = Shard(k, 3)
        summary = await run_batch(client, jobs, out, shard=f"{k}/3")
        owned = shard_ids(ids, shard)
        assert summary.manifest == out / f"manifest.{k}-of-3.jsonl"
        assert (summary.saved, summary.skipped) == (len(owned), 0)
        assert read_ids(summary.manifest) == owned
        assert sorted(prompts_sent(relay)[sent:]) == owned
        assert (out / f".manifest-sent.{k}-of-3.jsonl").exists()
        sent += len(owned)
    assert sent == len(ids) == len(relay.requests)
    assert not (out / MANIFEST_NAME).exists()
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i}_0.png" for i in ids]


async def test_a_shard_resumes_from_its_own_manifest(relay, client, tmp_path, out):
    """A shard run again (BatchRun takes "2/2" too) sends only its failed job again."""
    ids = [f"job-{i}" for i in range(8)]
    jobs = write_jobs(tmp_path, "jobs.jsonl", jsonl(*({"prompt": i, "id": i} for i in ids)))
    shard = Shard(2, 2)
    relay.script(Fault.status(400, message="no"))
    first = await run_batch(client, jobs, out, shard=shard)
    assert (first.saved, first.failed) == (len(shard_ids(ids, shard)) - 1, 1)
    again = await BatchRun(client, out, shard="2/2").run(jobs)
    assert (again.saved, again.skipped) == (
        len(shard_ids(ids, shard)),
        len(shard_ids(ids, shard)) - 1,
    )
    assert len(relay.requests) == len(shard_ids(ids, shard)) + 1


async def test_a_run_without_shard_reads_the_shards_manifests(relay, client, tmp_path, out):
    """After shards 1/2 and 2/2, a run without --shard sends nothing (every job was saved by
    some shard); after it, a new split of 3 sends nothing either."""
    ids = [f"job-{i}" for i in range(6)]
    jobs = write_jobs(tmp_path, "jobs.jsonl", jsonl(*({"prompt": i, "id": i} for i in ids)))
    for k in (1, 2):
        await run_batch(client, jobs, out, shard=Shard(k, 2))
    whole = await run_batch(client, jobs, out)
    assert (whole.saved, whole.skipped) == (6, 6)
    third = await run_batch(client, jobs, out, shard="3/3")
    assert third.skipped == len(shard_ids(ids, Shard(3, 3)))
    assert len(relay.requests) == 6


async def test_a_job_another_split_sent_and_never_recorded_is_not_paid_again(
    relay, client, tmp_path, out
):
    """A job in shard 1/2's send log with no line (its run died) is recorded outcome_unknown
    by a run without --shard, not sent; a later run does not record it again."""
    jobs = write_jobs(tmp_path, "jobs.jsonl", jsonl(*({"prompt": i, "id": i} for i in "abc")))
    out.mkdir()
    (out / "manifest.1-of-2.jsonl").write_bytes(b"")
    sent = SentJob.of(ImageRequest("a", id="a", idempotency_key="k-a"), started=1.0)
    (out / ".manifest-sent.1-of-2.jsonl").write_bytes(sent.to_line())
    summary = await run_batch(client, jobs, out)
    assert summary.outcome_unknown == 1
    assert sorted(prompts_sent(relay)) == ["b", "c"]
    assert latest(out)["a"]["status"] == "outcome_unknown"
    assert latest(out)["a"]["idempotency_keys"] == ["k-a"]
    lines = len(manifest_lines(out))
    await run_batch(client, jobs, out)
    assert len(manifest_lines(out)) == lines
    assert len(relay.requests) == 2


async def test_two_splits_cannot_run_at_once(client, tmp_path, out):
    """While shard 1/2 runs, a run without --shard (or of another split) is refused; another
    run of the same shard is too; another shard of its split is not."""
    jobs = write_jobs(tmp_path, "jobs.jsonl", jsonl({"prompt": "a", "id": "a"}))
    out.mkdir()
    running = Journal.open(out, Shard(1, 2))
    try:
        with pytest.raises(ConfigurationError, match="shard 1/2 is writing"):
            await run_batch(client, jobs, out)
        with pytest.raises(ConfigurationError, match="shard 1/2 is writing"):
            await run_batch(client, jobs, out, shard="1/3")
        with pytest.raises(ConfigurationError, match=r"writing to .* as shard 1/2"):
            await run_batch(client, jobs, out, shard="1/2")
        await run_batch(client, jobs, out, shard="2/2")
    finally:
        running.close()


@pytest.mark.parametrize(("shard", "says"), [("5/4", "does not exist"), ("2-4", "K/N")])
async def test_a_bad_shard_is_refused_before_anything_is_sent(relay, client, out, shard, says):
    """A shard that does not exist is a ValidationError, and nothing is sent or made."""
    with pytest.raises(ValidationError, match=says):
        await run_batch(client, [ImageRequest("a")], out, shard=shard)
    assert not relay.requests
    assert not out.exists()
