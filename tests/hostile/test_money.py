"""Hardening issue, "Money and images": never lose a paid image, never pay twice.

Bullet -> tests (each failed before the fix; see tests/hostile/README.md):

- a paid image lost when it cannot be written ->
  `test_a_destination_that_cannot_take_files_is_refused_before_paying`,
  `test_an_image_paid_for_is_handed_back_when_it_cannot_be_written`
- 524 recorded `failed`, resent with a new key -> `test_a_524_is_outcome_unknown_in_a_batch`
- 503/500 "model not served here" retried, shrinking the pool ->
  `test_a_model_the_relay_does_not_serve_is_permanent`
- `"created"` that overflows; an `idempotency_key` refused after sending ->
  `test_an_unusable_created_keeps_the_paid_image`,
  `test_an_idempotency_key_that_cannot_name_files_is_refused_before_sending`
- temp files a kill -9 left -> `test_a_resumed_batch_sweeps_the_temp_files_of_a_killed_run`
- `--rpm`: a job waiting for its rate slot already logged sent ->
  `test_a_job_still_waiting_for_its_rate_slot_at_a_kill_is_not_held_back`
- keep-alive connection closed by the relay ->
  `test_a_request_the_relay_closed_unread_is_sent_again`
"""

import contextlib
import gc
import json
import shutil
import signal
import subprocess
import warnings
from pathlib import Path

import anyio
import pytest

import gemimg_async as gi
from gemimg_async.testing import FakeClock
from helpers import untagged
from hostile.servers import (
    Reply,
    ScriptedRelay,
    SilentRelay,
    StaleKeepAliveRelay,
    b64_answer,
    error_json,
    small_png,
)
from hostile.support import (
    API_KEY,
    PNG_SIGNATURE,
    child_env,
    command,
    image_files,
    once,
    temp_files,
    unwritable_folder,
    wait_for,
)

pytestmark = pytest.mark.anyio

TIER_4K = "gemini-3-pro-image-preview-4k"
SEND_LOG = ".manifest-sent.jsonl"


def manifest(out: Path) -> dict[str, dict]:
    """The latest manifest line of each job."""
    lines = (out / gi.MANIFEST_NAME).read_text(encoding="utf-8").splitlines()
    return {doc["id"]: doc for doc in map(json.loads, lines)}


# --- a paid image is never lost to a destination that cannot take it ---------------------------


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "not-a-folder.png"
    path.write_bytes(b"precious")
    return path


@pytest.mark.parametrize(
    "destination",
    [
        pytest.param(_a_file, id="a-file"),
        pytest.param(lambda tmp_path: _a_file(tmp_path) / "sub", id="a-path-under-a-file"),
        pytest.param(unwritable_folder, id="an-unwritable-folder"),
    ],
)
@pytest.mark.parametrize("response_format", ["url", "b64_json"])
async def test_a_destination_that_cannot_take_files_is_refused_before_paying(
    relay, tmp_path, destination, response_format
):
    """generate(save_to=) a file, a path under a file or an unwritable folder raises our error
    before anything is sent (nothing is paid for an image that could not be kept)."""
    save_to = destination(tmp_path)
    async with once(relay.url) as client:
        with pytest.raises(Exception) as caught:  # which class is the question
            await client.generate("a fox", response_format=response_format, save_to=save_to)
    assert [r.prompt for r in relay.requests] == [], (
        f"paid for, then lost to: {type(caught.value).__name__}: {caught.value}"
    )
    assert isinstance(caught.value, gi.GemimgError), repr(caught.value)
    if (tmp_path / "not-a-folder.png").exists():
        assert (tmp_path / "not-a-folder.png").read_bytes() == b"precious"


def _replace_folder_by_a_file(folder: Path):
    def sabotage(_seen) -> None:
        shutil.rmtree(folder)
        folder.write_bytes(b"")

    return sabotage


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
async def test_an_image_paid_for_is_handed_back_when_it_cannot_be_written(
    scripted, tmp_path, response_format
):
    """When the folder breaks after the request was paid, our error (proposed: gi.SaveError,
    with `.result`) carries the image (its URL, its bytes, or a spare file it names) and the
    request's ids, and no temp file is left."""
    image = small_png()
    folder = tmp_path / "out"
    folder.mkdir()
    scripted.files["paid.png"] = image
    body = (
        json.dumps({"created": 1, "data": [{"url": scripted.file_url("paid.png")}]}).encode()
        if response_format == "url"
        else b64_answer(image)
    )
    scripted.script(Reply(body=body, before=_replace_folder_by_a_file(folder)))
    async with once(scripted.url) as client:
        with pytest.raises(Exception) as caught:  # which class is the question
            await client.generate("a fox", response_format=response_format, save_to=folder)
    error = caught.value
    assert isinstance(error, gi.GemimgError), (
        f"a bare {type(error).__name__} carrying no URL, bytes nor request id: {error}"
    )
    assert isinstance(error, gi.SaveError)  # proposed: the paid image could not be saved
    [seen] = scripted.requests
    assert error.request_id == seen.request_id
    assert error.idempotency_key == seen.idempotency_key
    [kept] = error.result.images
    if kept.url is not None:
        assert kept.url == scripted.file_url("paid.png")
    elif kept.data is not None:
        assert kept.data == image
    else:
        assert kept.path is not None, "the image is nowhere"
        assert untagged(kept.path) == image
        assert str(kept.path) in str(error)
    assert temp_files(tmp_path) == []


# --- what may have been billed is recorded so, and resent with its key -------------------------

CLOUDFLARE_524 = (
    b"<!DOCTYPE html><html><head><title>api.example.com | 524: A timeout occurred</title>"
    b"</head><body><h1>A timeout occurred</h1><p>The origin web server timed out responding "
    b"to this request.</p><span>Cloudflare Ray ID: 8f1c2d3e4a5b6c7d</span></body></html>"
)


async def test_a_524_is_outcome_unknown_in_a_batch(tmp_path):
    """Jobs answered 524 (the proxy stopped waiting; the relay may still generate and bill)
    are recorded outcome_unknown: a plain re-run sends nothing, --retry-unknown resends each
    once with its Idempotency-Key."""
    out = tmp_path / "out"
    jobs = [gi.ImageRequest(f"job {i}", id=f"job-{i}") for i in range(3)]
    async with (
        ScriptedRelay(default=Reply(524, CLOUDFLARE_524, "text/html")) as relay,
        gi.Client(API_KEY, relay.url, clock=FakeClock()) as client,
    ):
        await gi.run_batch(client, jobs, out)
        first = {seen.prompt: seen.idempotency_key for seen in relay.requests}
        assert {job: doc["status"] for job, doc in manifest(out).items()} == dict.fromkeys(
            [job.id for job in jobs], "outcome_unknown"
        )
        await gi.run_batch(client, jobs, out)
        assert len(relay.requests) == 3, "a plain re-run paid again for what a 524 left"
        relay.default = Reply(body=b64_answer(small_png()))
        await gi.run_batch(client, jobs, out, retry_unknown=True)
    resent = {seen.prompt: seen.idempotency_key for seen in relay.requests[3:]}
    assert resent == first
    assert {doc["status"] for doc in manifest(out).values()} == {"saved"}


NOT_SERVED = [
    pytest.param(
        503,
        error_json(
            f"当前分组 default 下对于模型 {TIER_4K} 无可用渠道 (request id: 20250101)",
            "model_not_found",
        ),
        id="new-api-503-model_not_found",
    ),
    pytest.param(
        503,
        error_json(f"当前分组 default 下对于模型 {TIER_4K} 无可用渠道", "", "one_api_error"),
        id="one-api-503-no-channel",
    ),
    pytest.param(
        500,
        error_json(f"model {TIER_4K} not found in any channel", "model_not_found"),
        id="500-model_not_found",
    ),
]


@pytest.mark.parametrize(("status", "body"), NOT_SERVED)
async def test_a_model_the_relay_does_not_serve_is_permanent(status, body):
    """A 503 or 500 whose body says no channel serves the model is raised at once, as our error
    naming the model (proposed: gi.ModelNotServedError), without shrinking the pool."""
    clock = FakeClock()
    async with (
        ScriptedRelay(default=Reply(status, body)) as relay,
        gi.Client(API_KEY, relay.url, clock=clock, max_concurrency=8) as client,
    ):
        with pytest.raises(gi.GemimgError) as caught:
            await client.generate_4k("a fox")
        limit = client.stats.limit
    assert len(relay.requests) == 1, f"sent {len(relay.requests)} times, waiting {clock.sleeps}"
    assert limit == 8, "the pool shrank for a model that is not served"
    assert isinstance(caught.value, gi.ModelNotServedError)
    assert TIER_4K in str(caught.value)


# --- values the client cannot use: the relay's after keeping the image, the caller's before ----


@pytest.mark.parametrize("created", [10**20, -(10**20), 10**400], ids=["1e20", "-1e20", "1e400"])
@pytest.mark.parametrize("response_format", ["url", "b64_json"])
async def test_an_unusable_created_keeps_the_paid_image(
    scripted, tmp_path, created, response_format
):
    """An answer whose "created" no clock can read ends in the image on disk (the value
    ignored) or in MalformedResponseError with the image kept; never an untyped error, never a
    temp file left."""
    image = small_png()
    scripted.files["a.png"] = image
    body = (
        json.dumps({"created": created, "data": [{"url": scripted.file_url("a.png")}]})
        if response_format == "url"
        else b64_answer(image, created=created).decode()
    )
    scripted.script(Reply(body=body.encode()))
    untyped = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        async with once(scripted.url) as client:
            try:
                result = await client.generate(
                    "a fox", response_format=response_format, save_to=tmp_path
                )
            except gi.MalformedResponseError:
                pass
            except Exception as error:  # noqa: BLE001 - kept as text: its frames hold a file
                untyped = f"{type(error).__name__}: {error}"
            else:
                assert result.created is None or abs(result.created) < 10**12
        gc.collect()  # what the error left open is found now, by this test
    left_open = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert untyped is None, f"an untyped error after the image was paid for: {untyped}"
    assert left_open == []
    assert [untagged(path) for path in image_files(tmp_path)] == [image]
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("key", ["k/../../x-0001", "key:with:colons", "a*b?c<d>|e"])
async def test_an_idempotency_key_that_cannot_name_files_is_refused_before_sending(
    scripted, tmp_path, key
):
    """An idempotency_key the file-name rule rejects is refused before sending, or never used
    in a file name; it is never sent and then refused."""
    request = gi.ImageRequest("a fox", idempotency_key=key, response_format="b64_json")
    refused: gi.ValidationError | None = None
    async with once(scripted.url) as client:
        try:
            result = await client.send(request, save_to=tmp_path)
        except gi.ValidationError as error:
            refused = error
    if refused is not None:
        assert scripted.requests == [], f"sent, then refused: {refused}"
    else:
        assert [untagged(path) for path in result.paths] == [small_png()]
        assert all(path.parent == tmp_path for path in result.paths)


# --- kill -9 and the send log -------------------------------------------------------------------


async def _kill_9(process: anyio.abc.Process) -> None:
    process.kill()
    with anyio.fail_after(10):
        await process.wait()
    assert process.returncode == -signal.SIGKILL


@contextlib.asynccontextmanager
async def _batch_process(*args: str, cwd: Path):
    """`gemimg-async batch ARGS` running in a subprocess; killed (-9) if the test leaves early."""
    process = await anyio.open_process(
        command("batch", *args),
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            await _kill_9(process)
        await process.aclose()


async def test_a_resumed_batch_sweeps_the_temp_files_of_a_killed_run(tmp_path):
    """A batch killed (-9) while an image streamed in leaves a .gemimg-*.part file; the next run
    on the folder (holding its lock) removes it, however fresh."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "fox", "prompt": "a fox", "response_format": "b64_json"}\n')
    out = tmp_path / "out"
    # large enough that its first half is written in blocks (a small image waits in memory)
    payload = b64_answer(PNG_SIGNATURE + bytes(1_500_000))
    stalled_head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: req-{n}\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload[: len(payload) // 2])
    )
    async with SilentRelay(head=stalled_head) as relay:
        async with _batch_process(
            "jobs.jsonl", "--out", "out", "--base-url", relay.url, cwd=tmp_path
        ) as process:
            # the request reached the relay, and its image is streaming in (not the folder's probe)
            await wait_for(lambda: relay.requests == 1 and temp_files(out))
            await _kill_9(process)
        assert temp_files(out), "the kill left no temp file: nothing to test"
        with anyio.fail_after(10):
            async with once(relay.url) as client:
                await gi.run_batch(client, jobs, out)
        assert relay.requests == 1  # the job the dead run sent is not paid for twice
    assert manifest(out)["fox"]["status"] == "outcome_unknown"
    assert temp_files(out) == [], "a resumed batch left the killed run's temp files in place"


async def test_a_job_still_waiting_for_its_rate_slot_at_a_kill_is_not_held_back(relay, tmp_path):
    """With --rpm, a job waiting for its start at a kill -9 was never sent: the next run sends
    it rather than holding it back as outcome_unknown (maybe billed)."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f'{{"id": "job-{i}", "prompt": "job {i}"}}\n' for i in range(3)))
    out = tmp_path / "out"
    args = ("--out", "out", "--base-url", relay.url, "--rpm", "1", "--concurrency", "4")
    async with _batch_process("jobs.jsonl", *args, cwd=tmp_path) as process:
        # one start a minute: job 0 goes at once, the next waits for its slot
        await wait_for(lambda: (out / gi.MANIFEST_NAME).is_file() and manifest(out))
        await _kill_9(process)
    assert [r.prompt for r in relay.requests] == ["job 0"]
    async with once(relay.url) as client:
        summary = await gi.run_batch(client, jobs, out)
    states = {job: doc["status"] for job, doc in manifest(out).items()}
    assert states == dict.fromkeys(["job-0", "job-1", "job-2"], "saved"), (
        "a job that never reached the relay was held back as maybe billed"
    )
    assert sorted(r.prompt for r in relay.requests) == ["job 0", "job 1", "job 2"]
    assert summary.ok


# --- a connection the relay closed is not a request it read ------------------------------------


async def test_a_request_the_relay_closed_unread_is_sent_again():
    """A request on a pooled keep-alive connection that the relay closes without reading it
    (and without a byte of answer: aiohttp's ServerDisconnectedError) was not sent: it goes
    again on a fresh connection and succeeds; the relay read each request once."""
    async with (
        StaleKeepAliveRelay() as relay,
        gi.Client(API_KEY, relay.url, clock=FakeClock()) as client,
    ):
        first = await client.generate("one", response_format="b64_json")
        with anyio.fail_after(10):
            second = await client.generate("two", response_format="b64_json")
    assert [body["prompt"] for body in relay.served] == ["one", "two"]
    assert relay.connections == 2
    assert first.images[0].data == second.images[0].data == small_png()
