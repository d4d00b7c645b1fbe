"""A batch's writer (`_journal`): the manifest and the send log of one folder, locked for one
run; through `run_batch` against the fake relay.
"""

import json
import time
from decimal import Decimal

import pytest

from gemimg_async import (
    MANIFEST_NAME,
    ConfigurationError,
    Cost,
    ImageRequest,
    ManifestEntry,
    run_batch,
)
from gemimg_async._journal import Journal, SentJob
from helpers import PNG_END, PNG_SIGNATURE, jsonl, latest, write_jobs

pytestmark = pytest.mark.anyio


async def test_a_torn_last_line_is_cut_off_when_a_batch_starts(client, out):
    """Starting a batch truncates the manifest back to its last complete line."""
    out.mkdir()
    good = ManifestEntry(id="old", status="failed", error="x").to_line()
    (out / MANIFEST_NAME).write_bytes(good + b'{"id": "torn", "stat')
    await run_batch(client, [], out)
    assert (out / MANIFEST_NAME).read_bytes() == good


@pytest.mark.parametrize("images_landed", [False, True])
async def test_a_job_a_dead_run_had_in_flight_is_not_paid_for_twice(
    relay, client, tmp_path, out, images_landed
):
    """A job a killed run sent but never recorded ends outcome_unknown (or saved, when its images
    are on disk) without being sent again."""
    jobs = write_jobs(tmp_path, "jobs.jsonl", jsonl({"prompt": "lost", "id": "lost"}))
    journal = Journal.open(out)  # a run that logs the job sent, then dies
    request = ImageRequest("lost", id="lost", idempotency_key="key-1")
    journal.log_sent(SentJob.of(request, started=time.time()))
    journal.close()
    if images_landed:
        (out / "lost_0.png").write_bytes(PNG_SIGNATURE + PNG_END)
    summary = await run_batch(client, jobs, out)
    assert relay.requests == []
    entry = latest(out)["lost"]
    if images_landed:
        assert (entry["status"], entry["paths"]) == ("saved", ["lost_0.png"])
    else:
        assert entry["status"] == "outcome_unknown"
        assert "may have been billed" in entry["error"]
        assert entry["idempotency_keys"] == ["key-1"]
        assert summary.outcome_unknown == 1
    assert not (out / ".manifest-sent.jsonl").read_bytes()
    relay.reset()
    await run_batch(client, jobs, out)
    assert relay.requests == []  # the send log was settled once


async def test_a_second_batch_on_the_same_folder_is_refused(client, out):
    """Two batches never write one folder at once: the second raises ConfigurationError."""
    journal = Journal.open(out)
    try:
        with pytest.raises(ConfigurationError, match="another gemimg-async batch"):
            await run_batch(client, [ImageRequest("x")], out)
    finally:
        journal.close()
    assert (await run_batch(client, [ImageRequest("x")], out)).ok


@pytest.mark.parametrize("name", [MANIFEST_NAME, ".manifest-sent.jsonl"])
def test_a_symlink_in_place_of_the_manifest_or_send_log_is_refused(tmp_path, out, name):
    """Journal.open refuses a folder whose manifest or send log is a symlink (even a dangling
    one), naming it; the file it points to is neither truncated nor written."""
    victim = tmp_path / "precious.txt"
    victim.write_bytes(b"precious\n")
    out.mkdir()
    (out / name).symlink_to(victim)
    with pytest.raises(ConfigurationError, match="is a symbolic link") as caught:
        Journal.open(out)
    assert name in str(caught.value)
    assert victim.read_bytes() == b"precious\n"
    victim.unlink()
    with pytest.raises(ConfigurationError, match="is a symbolic link"):
        Journal.open(out)
    assert not victim.exists()


def test_a_send_log_line_keeps_the_jobs_estimate():
    """SentJob carries the cost reserved for its job through its line, into the entry a dead
    run's job is recorded with; an older line without it reads as None."""
    request = ImageRequest("a fox", id="fox", n=2)
    sent = SentJob.of(request, started=1.5, cost=Cost.of(Decimal("0.268")))
    doc = json.loads(sent.to_line())
    assert SentJob.from_json(doc) == sent
    entry = sent.unanswered(None, reason="killed", finished=2.0)
    assert (entry.status, entry.cost) == ("outcome_unknown", Cost.of(Decimal("0.268")))
    del doc["cost"]
    assert SentJob.from_json(doc).cost is None
