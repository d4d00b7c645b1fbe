"""A batch's output folder (`_outdir`): the images it holds by job id, and what dead runs left
behind; through `run_batch` against the fake relay.
"""

import os
import time

import pytest

from gemimg_async import MANIFEST_NAME, run_batch
from helpers import is_complete_png, jsonl, latest, prompts_sent, write_jobs

pytestmark = pytest.mark.anyio


async def test_images_without_a_manifest_line_are_recorded_saved_without_a_request(
    relay, client, tmp_path, out
):
    """A crash between placing the images and writing the line: the next run records the job
    saved from the files on disk, and sends nothing."""
    jobs = write_jobs(tmp_path, "jobs.jsonl", jsonl({"prompt": "two", "id": "two", "n": 2}))
    await run_batch(client, jobs, out)
    (out / MANIFEST_NAME).write_bytes(b"")  # the line never made it
    relay.reset()
    summary = await run_batch(client, jobs, out)
    assert relay.requests == []
    assert (summary.saved, summary.skipped) == (1, 1)
    assert latest(out)["two"]["paths"] == ["two_0.png", "two_1.png"]


async def test_an_incomplete_image_set_is_generated_again_in_full(relay, client, tmp_path, out):
    """With only some of a job's images on disk and no line, the job is sent again."""
    jobs = write_jobs(tmp_path, "jobs.jsonl", jsonl({"prompt": "two", "id": "two", "n": 2}))
    out.mkdir()
    (out / "two_0.png").write_bytes(b"stale")
    summary = await run_batch(client, jobs, out)
    assert prompts_sent(relay) == ["two"]
    assert summary.ok
    assert is_complete_png(out / "two_0.png")  # replaced: the batch owns its file names


async def test_stale_temporary_files_of_a_dead_run_are_removed(client, out):
    """Temporary image files untouched for a long while are removed when a batch starts."""
    out.mkdir()
    stale, fresh = out / ".gemimg-dead.part", out / ".gemimg-live.part"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    long_ago = time.time() - 3600
    os.utime(stale, (long_ago, long_ago))
    await run_batch(client, [], out)
    assert not stale.exists()
    assert fresh.exists()  # another process may still be writing it
