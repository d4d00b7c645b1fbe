"""A batch's output folder (`_outdir`): the images it holds by job id, and what dead runs left
behind; through `run_batch` against the fake relay.
"""

import fcntl

import pytest

from gemimg_async import MANIFEST_NAME, run_batch
from gemimg_async._outdir import FolderImages
from gemimg_async._sinks import WRITE_BLOCK, AtomicFile
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


async def test_temporary_files_no_process_holds_are_removed_however_fresh(client, out):
    """A batch start removes the temporary image files no live process holds (a killed run's),
    however fresh; one a writer holds (its flock, as AtomicFile takes) stays."""
    out.mkdir()
    dead, live = out / ".gemimg-dead.part", out / ".gemimg-live.part"
    dead.write_bytes(b"partial")
    with live.open("wb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)
        await run_batch(client, [], out)
        assert live.exists()  # another process may still be writing it
    assert not dead.exists()


async def test_an_image_streaming_in_is_not_swept(out):
    """The temporary file of an image being written (AtomicFile) survives a scan of its folder;
    once aborted it is gone."""
    out.mkdir()
    sink = AtomicFile.create(out, max_bytes=1 << 21)
    await sink.write(b"\x89PNG\r\n\x1a\n" + bytes(WRITE_BLOCK))  # a block: on disk
    FolderImages.scan(out)
    assert [path.name for path in out.iterdir() if path.name.startswith(".gemimg-")]
    sink.abort()
    assert list(out.iterdir()) == []


def test_symlinked_images_are_not_images_of_the_folder(out, tmp_path):
    """An image name that is a symlink does not count as a job's image: a planted link never
    makes a job look saved."""
    out.mkdir()
    (tmp_path / "elsewhere.png").write_bytes(b"png")
    (out / "fox_0.png").symlink_to(tmp_path / "elsewhere.png")
    (out / "cat_0.png").write_bytes(b"png")
    images = FolderImages.scan(out)
    assert images.complete("fox", 1) is None
    assert images.complete("cat", 1) == ("cat_0.png",)
