"""Bulk jobs: job files, the manifest, resuming, stopping, and `Client.map` under a batch.

Everything runs against the fake relay over real sockets on 127.0.0.1.
"""

import asyncio
import contextlib
import errno
import json
import os
import time
from pathlib import Path

import anyio
import pytest

from gemimg_async import (
    MANIFEST_NAME,
    BadLine,
    BatchRun,
    Client,
    ConfigurationError,
    ImageRequest,
    JobDefaults,
    ManifestEntry,
    ValidationError,
    content_id,
    read_jobs,
    read_manifest,
    run_batch,
)
from gemimg_async._journal import Journal
from gemimg_async.testing import FakeClock, FakeRelay, Fault

pytestmark = pytest.mark.anyio

API_KEY = "sk-test"
STANDARD = "gemini-3-pro-image-preview"
TIER_2K = "gemini-3-pro-image-preview-2k"
TIER_4K = "gemini-3-pro-image-preview-4k"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
MANIFEST_KEYS = {
    "id",
    "status",
    "paths",
    "error",
    "attempts",
    "request_ids",
    "idempotency_keys",
    "model",
    "size",
    "started",
    "finished",
}


# --- helpers -----------------------------------------------------------------------------------


def write_jobs(folder: Path, name: str, lines: list[str] | str) -> Path:
    path = folder / name
    text = lines if isinstance(lines, str) else "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*docs: dict) -> list[str]:
    return [json.dumps(doc, ensure_ascii=False) for doc in docs]


def collect(path, **kwargs) -> tuple[list[ImageRequest], list[BadLine]]:
    bad: list[BadLine] = []
    return list(read_jobs(path, on_bad_line=bad.append, **kwargs)), bad


def manifest_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]


def latest(out: Path) -> dict[str, dict]:
    return {doc["id"]: doc for doc in manifest_lines(out)}


def is_complete_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG_SIGNATURE) and data.endswith(PNG_END)


def prompts_sent(relay: FakeRelay) -> list[str]:
    return [request.prompt for request in relay.requests]


async def wait_for(condition) -> None:
    """Poll `condition` (relay state has no event to wait on) for up to 10 seconds."""
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - polling another party's state
            await anyio.sleep(0.005)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@contextlib.asynccontextmanager
async def slow_client(latency: float, max_concurrency: int):
    """A relay of its own that takes `latency` per generation, and a client for it."""
    async with (
        FakeRelay(api_keys=API_KEY, latency=latency) as relay,
        Client(API_KEY, relay.url, max_concurrency=max_concurrency, clock=FakeClock()) as client,
    ):
        yield relay, client


# --- job files ---------------------------------------------------------------------------------


def test_jsonl_jobs_take_every_field_and_the_defaults(tmp_path):
    """A .jsonl job gets its own fields, the defaults for the rest, and `image` as `images`."""
    path = write_jobs(
        tmp_path,
        "jobs.jsonl",
        [
            *jsonl(
                {
                    "prompt": "a lighthouse",
                    "id": "light",
                    "model": "2k",
                    "size": "16:9",
                    "n": 2,
                    "response_format": "b64_json",
                },
                {"prompt": "a fox"},
            ),
            "",
            *jsonl({"prompt": "a cat", "image": "https://example.com/cat.png", "size": None}),
        ],
    )
    jobs, bad = collect(path, defaults=JobDefaults(model="4k", size="1:1"))
    assert bad == []
    light, fox, cat = jobs
    assert (light.id, light.model, light.size, light.n, light.response_format) == (
        "light",
        TIER_2K,
        "16:9",
        2,
        "b64_json",
    )
    assert (fox.model, fox.size, fox.n, fox.response_format) == (TIER_4K, "1:1", 1, "url")
    assert cat.images == ("https://example.com/cat.png",)
    assert cat.size == "1:1"  # null counts as left out


def test_csv_jobs_read_their_header_and_both_image_spellings(tmp_path):
    """A .csv job file: header names, empty cells as defaults, images as JSON or `|`-separated."""
    path = tmp_path / "jobs.csv"
    path.write_text(
        "\ufeffPrompt,id,size,n,images\n"
        'a fox,fox,16:9,2,"[""https://e.com/a.png"", ""https://e.com/b.png""]"\n'
        "a cat,,,,https://e.com/c.png | https://e.com/d.png\n"
        '"a poem\nover two lines",poem,,,\n'
        "a dog,dog,,,\n",
        encoding="utf-8",
    )
    jobs, bad = collect(path)
    assert bad == []
    fox, cat, poem, dog = jobs
    assert (fox.id, fox.size, fox.n) == ("fox", "16:9", 2)
    assert fox.images == ("https://e.com/a.png", "https://e.com/b.png")
    assert cat.images == ("https://e.com/c.png", "https://e.com/d.png")
    assert cat.id == content_id(cat.__class__("a cat", images=cat.images))
    assert poem.prompt == "a poem\nover two lines"
    assert dog.id == "dog"


def test_txt_jobs_are_one_prompt_per_line(tmp_path):
    """A .txt job file holds one prompt per line; blank lines are skipped."""
    path = write_jobs(tmp_path, "jobs.txt", "a fox\n\n  a cat in the rain  \r\n一只狐狸\n")
    jobs, bad = collect(path, defaults=JobDefaults(size="3:4"))
    assert bad == []
    assert [job.prompt for job in jobs] == ["a fox", "a cat in the rain", "一只狐狸"]
    assert all(job.size == "3:4" and job.id for job in jobs)


def test_bad_jsonl_lines_are_reported_with_their_number_and_skipped(tmp_path):
    """Every kind of bad line is reported with its line number; the good lines still come."""
    path = write_jobs(
        tmp_path,
        "jobs.jsonl",
        [
            '{"prompt": "good one", "id": "a"}',
            '{"prompt": "torn',
            "[1, 2]",
            '{"prompt": ""}',
            '{"prompt": "x", "promt": "typo"}',
            '{"prompt": "x", "id": "../escape"}',
            '{"prompt": "x", "n": 0}',
            '{"prompt": "x", "size": "7:3"}',
            '{"prompt": "again", "id": "a"}',
            '{"prompt": "good two"}',
        ],
    )
    jobs, bad = collect(path)
    assert [job.prompt for job in jobs] == ["good one", "good two"]
    assert [line.line for line in bad] == [2, 3, 4, 5, 6, 7, 8, 9]
    reasons = [line.reason for line in bad]
    assert reasons[0].startswith("not valid JSON")
    assert "JSON object" in reasons[1]
    assert "prompt" in reasons[2]
    assert "promt" in reasons[3]
    assert "id must be" in reasons[4]
    assert "n must be" in reasons[5]
    assert "7:3" in reasons[6]
    assert reasons[7] == "duplicate id 'a' (first on line 1)"
    assert str(bad[0]).startswith("jobs.jsonl:2: not valid JSON")


def test_bad_csv_rows_and_bytes_that_are_not_utf8_are_bad_lines(tmp_path):
    """A CSV row with a bad count, too many cells, or bytes that are not UTF-8 is one bad line."""
    path = tmp_path / "jobs.csv"
    path.write_bytes(b"prompt,n\na fox,two\na cat,1,extra\ncaf\xe9 au lait,1\na dog,3\n")
    jobs, bad = collect(path)
    assert [job.prompt for job in jobs] == ["a dog"]
    assert [(line.line, line.reason) for line in bad] == [
        (2, "n must be a whole number, not 'two'"),
        (3, "3 cells, but the header names 2 columns"),
        (4, "not valid UTF-8"),
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("jobs.json", '{"prompt": "x"}', "ends in"),
        ("missing.jsonl", None, "no such job file"),
        ("jobs.csv", "prompt,colour\nx,red\n", "unknown column(s) 'colour'"),
        ("jobs.csv", "id,size\nx,1:1\n", "no prompt"),
    ],
)
def test_a_file_that_is_no_job_file_is_a_usage_error(tmp_path, name, content, message):
    """A wrong suffix, a missing file or a bad CSV header raise ValidationError at once."""
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_jobs(path)


def test_bad_defaults_are_a_usage_error():
    """Defaults are checked like any job, before anything is read."""
    with pytest.raises(ValidationError):
        JobDefaults(size="7:3")


def test_derived_ids_are_stable_and_repeats_get_suffixes(tmp_path):
    """Jobs without an id get the same id on every read; repeats get -2, -3 in file order."""
    path = write_jobs(
        tmp_path,
        "jobs.jsonl",
        jsonl({"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}, {"prompt": "a"}),
    )
    first, _ = collect(path)
    again, _ = collect(path)
    base = content_id(ImageRequest("a"))
    assert [job.id for job in first] == [
        base,
        content_id(ImageRequest("b")),
        f"{base}-2",
        f"{base}-3",
    ]
    assert [job.id for job in again] == [job.id for job in first]
    other_model, _ = collect(path, defaults=JobDefaults(model="2k"))
    assert other_model[0].id != base  # the id is of the request as resolved with its defaults


def test_local_input_images_are_found_beside_the_job_file(tmp_path):
    """A relative input image path is read from the job file's folder; the id is of the path as
    written, so moving the folder keeps the ids."""
    folder = tmp_path / "batch"
    folder.mkdir()
    path = write_jobs(folder, "jobs.jsonl", jsonl({"prompt": "paint it", "images": ["cat.png"]}))
    (job,), _ = collect(path)
    assert job.images == (str(folder / "cat.png"),)
    assert job.id == content_id(ImageRequest("paint it", images=["cat.png"]))


def test_job_files_are_read_lazily(tmp_path):
    """The first job comes before the rest of the file is read."""
    path = write_jobs(tmp_path, "jobs.jsonl", ['{"prompt": "first"}', *["{}"] * 5000, "not json"])
    bad: list[BadLine] = []
    jobs = read_jobs(path, on_bad_line=bad.append)
    assert next(jobs).prompt == "first"
    assert bad == []
    jobs.close()


# --- the manifest ------------------------------------------------------------------------------


def test_manifest_entry_round_trips_through_json():
    """ManifestEntry.to_json and from_json agree, and a line is one newline-terminated JSON."""
    entry = ManifestEntry(
        id="a",
        status="failed",
        paths=(),
        error="ServerError: HTTP 500: boom\nsecond line",
        attempts=2,
        request_ids=("req_1", "req_2"),
        idempotency_keys=("k",),
        model=STANDARD,
        size="1:1",
        started=1.5,
        finished=2.25,
        prompt="一只狐狸",
    )
    line = entry.to_line()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert ManifestEntry.from_json(json.loads(line)) == entry
    assert set(entry.to_json()) >= MANIFEST_KEYS


def test_latest_line_wins_and_a_torn_last_line_is_ignored(tmp_path):
    """The latest line per id is its state; a torn last line and a bad middle line are skipped."""
    path = tmp_path / MANIFEST_NAME
    lines = [
        ManifestEntry(id="a", status="failed", error="x").to_line(),
        b"garbage in the middle\n",
        ManifestEntry(id="b", status="saved", paths=("b_0.png",)).to_line(),
        ManifestEntry(id="a", status="saved", paths=("a_0.png",)).to_line(),
        b'{"id": "c", "status": "sav',
    ]
    path.write_bytes(b"".join(lines))
    entries = read_manifest(path)
    assert {job_id: entry.status for job_id, entry in entries.items()} == {
        "a": "saved",
        "b": "saved",
    }


async def test_a_torn_last_line_is_cut_off_when_a_batch_starts(client, out):
    """Starting a batch truncates the manifest back to its last complete line."""
    out.mkdir()
    good = ManifestEntry(id="old", status="failed", error="x").to_line()
    (out / MANIFEST_NAME).write_bytes(good + b'{"id": "torn", "stat')
    await run_batch(client, [], out)
    assert (out / MANIFEST_NAME).read_bytes() == good


def test_a_manifest_of_10000_jobs_is_read_in_well_under_a_second(tmp_path):
    """read_manifest reads 10,000 lines in well under a second (a regression guard, 1 s)."""
    path = tmp_path / MANIFEST_NAME
    entry = ManifestEntry(
        id="x",
        status="saved",
        paths=("x_0.png",),
        attempts=1,
        request_ids=("req_0123456789abcdef01234567",),
        idempotency_keys=("3f9880b6-eb92-4d48-a820-e77f938ede3d",),
        model=STANDARD,
        size="16:9",
        started=1.7e9,
        finished=1.7e9 + 30,
        prompt="a lighthouse on a basalt cliff at dusk, storm clouds parting, cinematic " * 2,
    )
    template = json.dumps(entry.to_json())
    path.write_text("".join(template.replace('"x', f'"j{i:05d}') + "\n" for i in range(10_000)))
    began = time.perf_counter()
    entries = read_manifest(path)
    elapsed = time.perf_counter() - began
    assert len(entries) == 10_000
    assert elapsed < 1.0


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


@pytest.mark.parametrize("images_landed", [False, True])
async def test_a_job_a_dead_run_had_in_flight_is_not_paid_for_twice(
    relay, client, tmp_path, out, images_landed
):
    """A job a killed run sent but never recorded ends outcome_unknown (or saved, when its images
    are on disk) without being sent again."""
    jobs = write_jobs(tmp_path, "jobs.jsonl", jsonl({"prompt": "lost", "id": "lost"}))
    journal = Journal.open(out)  # a run that marks the job sent, then dies
    journal.mark_sent(ImageRequest("lost", id="lost", idempotency_key="key-1"), time.time())
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


async def test_stop_finishes_what_was_sent_and_sends_nothing_more(tmp_path, out):
    """stop() takes no new job; the requests in flight finish and are recorded, and a re-run
    sends only the rest."""
    jobs = write_jobs(tmp_path, "jobs.txt", [f"job {i}" for i in range(10)])
    async with slow_client(0.3, 2) as (relay, client):
        batch = BatchRun(client, out)
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                nonlocal summary
                summary = await batch.run(jobs)

            summary = None
            tg.start_soon(run)
            await wait_for(lambda: relay.in_flight == 2)
            batch.stop()
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


async def test_a_second_batch_on_the_same_folder_is_refused(client, out):
    """Two batches never write one folder at once: the second raises ConfigurationError."""
    journal = Journal.open(out)
    try:
        with pytest.raises(ConfigurationError, match="another gemimg-async batch"):
            await run_batch(client, [ImageRequest("x")], out)
    finally:
        journal.close()
    assert (await run_batch(client, [ImageRequest("x")], out)).ok


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


async def test_jobs_may_be_an_iterable_of_requests(relay, client, out):
    """run_batch takes ImageRequest values too; those without an id get their content id."""
    requests = [ImageRequest("a fox"), ImageRequest("a fox"), ImageRequest("a cat", id="cat")]
    summary = await run_batch(client, iter(requests), out)
    base = content_id(requests[0])
    assert set(latest(out)) == {base, f"{base}-2", "cat"}
    assert summary.ok


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


# --- Client.map under a batch's load -----------------------------------------------------------


def map_worker_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if "_map_worker" in t.get_coro().__qualname__]


async def test_map_pulls_a_huge_generator_lazily_with_bounded_tasks(relay, client):
    """100,000 queued prompts: map pulls only what the pool can send, and the number of live
    tasks stays small; leaving the loop ends them all.

    Running all 100,000 over HTTP would take minutes of CI, so 2,000 are consumed: what matters
    is that nothing grows with the input's length.
    """
    pulled = 0

    def prompts():
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield ImageRequest(f"prompt {i}")

    max_concurrency = client.stats.max_concurrency
    before = len(asyncio.all_tasks())
    consumed = most_tasks = 0
    async with contextlib.aclosing(client.map(prompts())) as outcomes:
        async for outcome in outcomes:
            assert outcome.ok
            consumed += 1
            assert pulled <= consumed + 2 * max_concurrency
            most_tasks = max(most_tasks, len(asyncio.all_tasks()))
            if consumed == 2_000:
                break
    assert pulled <= consumed + 2 * max_concurrency
    assert most_tasks <= before + 3 * max_concurrency  # workers, and the relay's connections
    assert map_worker_tasks() == []
    await wait_for(lambda: relay.in_flight == 0)
    await anyio.sleep(0.05)  # the relay's side of the cancelled requests winds down
    assert len(asyncio.all_tasks()) <= before + 2 * max_concurrency  # the relay's connections


async def test_map_ordered_yields_in_input_order(relay, client):
    """ordered=True yields outcomes in input order though they finish out of order."""
    relay.script(Fault.delay(0.3), Fault.delay(0.2), Fault.delay(0.1))
    requests = [ImageRequest(f"p{i}", id=f"r{i}") for i in range(12)]
    outcomes = [outcome async for outcome in client.map(requests, ordered=True)]
    assert [outcome.index for outcome in outcomes] == list(range(12))
    assert [outcome.request.id for outcome in outcomes] == [f"r{i}" for i in range(12)]
    unordered = [outcome async for outcome in client.map(requests)]
    assert sorted(outcome.index for outcome in unordered) == list(range(12))


async def test_map_goes_on_after_one_request_fails(relay, clock):
    """One request's error is its outcome; the others are generated all the same."""
    relay.script(Fault.delay(0), Fault.status(400), Fault.delay(0))
    async with Client(API_KEY, relay.url, max_concurrency=1, clock=clock) as client:
        outcomes = [o async for o in client.map([ImageRequest(f"p{i}") for i in range(4)])]
    assert [outcome.ok for outcome in outcomes] == [True, False, True, True]
    assert type(outcomes[1].error).__name__ == "BadRequestError"


async def test_leaving_map_early_cancels_what_is_in_flight():
    """Breaking out of map (closed with aclosing) cancels the requests still in flight."""
    async with slow_client(0.0, 4) as (relay, client):
        relay.latency = {STANDARD: 30.0, TIER_2K: 0.0}
        requests = [
            ImageRequest("fast", model="2k"),
            *(ImageRequest(f"slow {i}") for i in range(9)),
        ]
        with anyio.fail_after(5):
            async with contextlib.aclosing(client.map(requests)) as outcomes:
                async for outcome in outcomes:
                    assert outcome.request.prompt == "fast"
                    break
        assert map_worker_tasks() == []
        assert client.stats.in_flight == 0
    assert len(relay.requests) <= 5  # the pool's worth, and at most one pulled as "fast" ended


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


async def test_a_full_disk_halts_the_batch(relay, client, tmp_path, out, monkeypatch):
    """When the output folder takes no more, the batch stops taking jobs (each would be paid
    for, then lost) and says why."""
    from gemimg_async import _sinks  # noqa: PLC0415 - the file class under the aiofiles wrapper

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_sinks._GuardedFile, "write", write)
    jobs = write_jobs(tmp_path, "jobs.txt", [f"job {i}" for i in range(20)])
    async with Client(API_KEY, relay.url, max_concurrency=1, clock=FakeClock()) as one:
        summary = await run_batch(one, jobs, out, defaults=JobDefaults(response_format="b64_json"))
    assert summary.halted is not None
    assert "takes no more" in summary.halted
    assert len(relay.requests) == 1
