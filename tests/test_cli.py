"""The `gemimg-async` command (`_cli`).

The batch tests that need a real process (kill -9, Ctrl-C) run `python -m gemimg_async` as a
subprocess against the session's fake relay, awaited with anyio so the relay keeps answering on
this event loop. The others call `main()` in a worker thread (it runs its own event loop).
"""

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteReceiveStream

import gemimg_async._cli
from gemimg_async import MANIFEST_NAME
from gemimg_async._cli import main
from gemimg_async.testing import FakeRelay, Fault, png
from helpers import API_KEY, is_complete_png, latest, manifest_lines, reference, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("restore_logging")]


def child_env() -> dict[str, str]:
    env = {**os.environ, "GEMIMG_API_KEY": API_KEY}
    env.pop("GEMIMG_BASE_URL", None)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gemimg_async", *args]


async def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """The command in a subprocess, to the end."""
    return await anyio.run_process(command(*args), cwd=cwd, env=child_env(), check=False)


async def main_in_thread(*args: str) -> int:
    """main() with its own event loop in a worker thread (this thread's loop is the test's, and
    the relay answers on it)."""
    return await anyio.to_thread.run_sync(main, list(args))


def write_prompts(folder: Path, count: int, name: str = "jobs.txt") -> Path:
    path = folder / name
    path.write_text("".join(f"prompt number {i}\n" for i in range(count)), encoding="utf-8")
    return path


async def read_until(stream: ByteReceiveStream, text: bytes, seen: bytearray) -> None:
    with anyio.fail_after(20):
        while text not in seen:
            seen += await stream.receive()


async def drain(stream: ByteReceiveStream | None, into: bytearray) -> None:
    if stream is None:
        return
    try:
        while True:
            into += await stream.receive()
    except anyio.EndOfStream:
        pass


@pytest.fixture
def slow_relay(relay):
    """The session relay, taking 50 ms per generation for this test."""
    relay.latency = 0.05
    yield relay
    relay.latency = 0.0


# --- usage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jsonl"], "no such job file"),
        (["jobs.json"], "a job file ends in"),
        (["jobs.txt", "--size", "7:3"], "7:3"),
    ],
)
async def test_usage_errors_exit_2(tmp_path, monkeypatch, capsys, args, message):
    """A missing or unknown job file, or a bad flag value, exits 2 with a message."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEMIMG_API_KEY", API_KEY)
    (tmp_path / "jobs.json").write_text("{}")
    write_prompts(tmp_path, 1)
    code = await main_in_thread("batch", *args, "--out", "out", "--base-url", "http://127.0.0.1:9")
    assert code == 2
    assert message in capsys.readouterr().err


async def test_no_key_exits_2(tmp_path, monkeypatch, capsys):
    """Without a key, batch exits 2 and says how to give one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GEMIMG_API_KEY", raising=False)
    write_prompts(tmp_path, 1)
    code = await main_in_thread(
        "batch", "jobs.txt", "--out", "out", "--base-url", "http://127.0.0.1:9"
    )
    assert code == 2
    assert "GEMIMG_API_KEY" in capsys.readouterr().err


def test_out_is_required():
    """batch without --out is a usage error (argparse exits 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["batch", "jobs.txt"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--rpm", "-1"], "--rpm"),
        (["--progress-interval", "nan"], "--progress-interval"),
        (["--dialect", "soap"], "--dialect"),
        (["--max-cost", "-1"], "--max-cost"),
        (["--max-cost", "a lot"], "--max-cost"),
        (["--max-cost", "nan"], "--max-cost"),
    ],
)
def test_a_bad_flag_value_is_one_line_naming_the_flag(capsys, args, flag):
    """A flag value argparse refuses is one line on stderr naming the flag, exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(["batch", "jobs.txt", "--out", "out", *args])
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert flag in line


def test_an_unexpected_error_is_one_line_and_debug_shows_where(monkeypatch, capsys):
    """An error no one expected is one line asking for --debug, exit status 1; with --debug its
    traceback comes first."""

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(gemimg_async._cli, "generate", broken)
    assert main(["generate", "a fox"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        "gemimg-async: unexpected RuntimeError: a bug (run again with --debug to see where; "
        "please report it)"
    )
    assert main(["--debug", "generate", "a fox"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback")
    assert "in broken" in err


# --- batch -------------------------------------------------------------------------------------


async def test_batch_saves_everything_and_exits_0(relay, tmp_path):
    """`gemimg-async batch` in a subprocess saves every job, prints a summary, and exits 0; the
    same command again sends nothing."""
    write_prompts(tmp_path, 5)
    args = ("batch", "jobs.txt", "--out", "out", "--base-url", relay.url, "--concurrency", "3")
    done = await run_cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    stdout = done.stdout.decode()
    assert "batch started of about 5 jobs" in stdout
    assert "saved            5" in stdout
    lines = manifest_lines(tmp_path / "out")
    assert [line["status"] for line in lines] == ["saved"] * 5
    assert all(is_complete_png(tmp_path / "out" / line["paths"][0]) for line in lines)
    assert len(relay.requests) == 5
    again = await run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0
    assert "5 (5 done before this run)" in again.stdout.decode()
    assert len(relay.requests) == 5


async def test_failures_and_bad_lines_exit_1_and_are_reported(relay, tmp_path, capsys, monkeypatch):
    """A failed job and bad lines make the exit status 1; each bad line is named on stderr."""
    monkeypatch.setenv("GEMIMG_API_KEY", API_KEY)
    relay.script(Fault.status(400, message="nope"))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "one", "id": "one"}\nnot json\n{"prompt": "two", "id": "two"}\n')
    out = tmp_path / "out"
    code = await main_in_thread(
        "batch", str(jobs), "--out", str(out), "--base-url", relay.url, "--concurrency", "1"
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "jobs.jsonl:2: skipped: not valid JSON" in err
    assert "1 bad line(s)" in err
    states = {line["id"]: line["status"] for line in manifest_lines(out)}
    assert states == {"one": "failed", "two": "saved"}


async def test_job_file_values_override_the_flags(relay, tmp_path, monkeypatch):
    """--model, --size and --format fill what a job leaves out; the job's own values win."""
    monkeypatch.setenv("GEMIMG_API_KEY", API_KEY)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        '{"prompt": "own values", "size": "1:1", "model": "standard", "response_format": "url"}\n'
        '{"prompt": "flag values"}\n'
    )
    code = await main_in_thread(
        "batch",
        str(jobs),
        "--out",
        str(tmp_path / "out"),
        "--base-url",
        relay.url,
        "--model",
        "2k",
        "--size",
        "16:9",
        "--format",
        "b64_json",
    )
    assert code == 0
    sent = {request.prompt: request for request in relay.requests}
    own, flags = sent["own values"], sent["flag values"]
    assert (own.model, own.size, own.response_format) == (
        "gemini-3-pro-image-preview",
        "1:1",
        "url",
    )
    assert (flags.model, flags.size, flags.response_format) == (
        "gemini-3-pro-image-preview-2k",
        "16:9",
        "b64_json",
    )


async def test_kill_9_mid_run_then_resume_pays_for_nothing_twice(slow_relay, tmp_path):
    """kill -9 of a real batch mid-run leaves a valid manifest whose saved images are complete;
    re-running finishes the batch without asking again for any job that was sent before, and
    every job ends in exactly one final state."""
    relay = slow_relay
    write_prompts(tmp_path, 40)
    out = tmp_path / "out"
    args = ("batch", "jobs.txt", "--out", "out", "--base-url", relay.url, "--concurrency", "4")
    process = await anyio.open_process(
        command(*args),
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    async with process:
        manifest = out / MANIFEST_NAME
        await wait_for(lambda: manifest.exists() and manifest.read_bytes().count(b"\n") >= 8)
        process.kill()
        await process.wait()
    assert process.returncode == -signal.SIGKILL

    lines = manifest_lines(out)  # every line is valid JSON
    assert 8 <= len(lines) < 40
    saved_before = {line["prompt"] for line in lines if line["status"] == "saved"}
    for line in lines:
        assert line["status"] == "saved"
        assert all(is_complete_png(out / name) for name in line["paths"])
    sent_before = {request.prompt for request in relay.requests}
    assert saved_before < sent_before  # some were in flight at the kill

    resumed = await run_cli(*args, cwd=tmp_path)
    assert resumed.returncode in (0, 1), resumed.stderr.decode()
    sent_on_resume = [request.prompt for request in relay.requests[len(sent_before) :]]
    assert not set(sent_on_resume) & sent_before  # nothing sent before is asked again
    states = latest(out)
    assert len(states) == 40
    assert {line["status"] for line in states.values()} <= {"saved", "outcome_unknown"}
    unknown = {line["prompt"] for line in states.values() if line["status"] == "outcome_unknown"}
    assert not unknown & saved_before  # only jobs in flight at the kill (perhaps not arrived)
    if unknown:
        assert "outcome_unknown" in resumed.stderr.decode()

    final = await run_cli(*args, "--retry-unknown", cwd=tmp_path)
    assert final.returncode == 0, final.stderr.decode()
    lines = manifest_lines(out)
    states = latest(out)
    assert len(states) == 40
    assert {line["status"] for line in states.values()} == {"saved"}
    prompts = collections.Counter(request.prompt for request in relay.requests)
    assert all(prompts[prompt] == 1 for prompt in saved_before)
    assert all(prompts[prompt] <= 2 for prompt in unknown)  # sent again only on --retry-unknown
    saved_paths = [name for line in lines if line["status"] == "saved" for name in line["paths"]]
    assert len(saved_paths) == len(set(saved_paths)) == 40  # no image file referenced twice
    assert all(is_complete_png(out / name) for name in saved_paths)


async def test_ctrl_c_finishes_what_was_sent_records_it_and_exits_130(relay, tmp_path):
    """The first Ctrl-C takes no new job, lets the requests in flight finish, records them and
    exits 130; the same command then sends only the rest."""
    relay.latency = 0.5
    try:
        write_prompts(tmp_path, 12)
        args = ("batch", "jobs.txt", "--out", "out", "--base-url", relay.url, "--concurrency", "3")
        err = bytearray()
        process = await anyio.open_process(command(*args), cwd=tmp_path, env=child_env())
        async with process:
            await wait_for(lambda: len(relay.requests) == 3)
            process.send_signal(signal.SIGINT)
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain, process.stdout, bytearray())
                tg.start_soon(drain, process.stderr, err)
            await process.wait()
    finally:
        relay.latency = 0.0
    assert process.returncode == 130
    assert b"stopping: finishing 3 requests already sent (Ctrl-C again to abandon them)" in err
    lines = manifest_lines(tmp_path / "out")
    first = {request.prompt for request in relay.requests}
    assert len(first) == 3
    assert [line["status"] for line in lines] == ["saved"] * 3
    assert {line["prompt"] for line in lines} == first

    rest = await run_cli(*args, cwd=tmp_path)
    assert rest.returncode == 0
    later = [request.prompt for request in relay.requests[3:]]
    assert len(later) == 9
    assert not set(later) & first


async def test_a_second_ctrl_c_abandons_what_is_in_flight_at_once(tmp_path):
    """The second Ctrl-C cancels the requests in flight, records each as outcome_unknown (they
    may have been billed) and exits 130 at once."""
    async with FakeRelay(api_keys=API_KEY, latency=60.0) as relay:
        write_prompts(tmp_path, 6)
        args = ("batch", "jobs.txt", "--out", "out", "--base-url", relay.url, "--concurrency", "3")
        err = bytearray()
        process = await anyio.open_process(command(*args), cwd=tmp_path, env=child_env())
        async with process:
            await wait_for(lambda: len(relay.requests) == 3)
            process.send_signal(signal.SIGINT)
            assert process.stderr is not None
            await read_until(process.stderr, b"Ctrl-C again", err)
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(10):  # far less than the relay's 60 s
                async with anyio.create_task_group() as tg:
                    tg.start_soon(drain, process.stdout, bytearray())
                    tg.start_soon(drain, process.stderr, err)
                await process.wait()
    assert process.returncode == 130, err.decode()
    lines = manifest_lines(tmp_path / "out")
    assert len(lines) == 3
    for line in lines:
        assert line["status"] == "outcome_unknown"
        assert line["error"] == (
            "abandoned by a second Ctrl-C after it was sent; it may have been billed"
        )
    assert {line["prompt"] for line in lines} == {r.prompt for r in relay.requests}


# --- cost: dry run, prices, cap ---------------------------------------------------------------


async def test_a_dry_run_reports_every_bad_line_and_the_cost_and_sends_nothing(
    relay, tmp_path, monkeypatch, capsys
):
    """--dry-run prints each bad line with its number (a missing input image too), then jobs,
    images and the estimated cost per tier and in total; it sends nothing, makes no folder,
    needs no key, and exits 2 because a line is bad."""
    monkeypatch.delenv("GEMIMG_API_KEY", raising=False)
    (tmp_path / "cat.png").write_bytes(png())
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        '{"prompt": "a fox", "n": 2}\n'
        '{"prompt": "a cat", "images": ["cat.png", "dog.png"]}\n'
        "not json\n"
        '{"prompt": "a map", "model": "4k", "images": ["cat.png"]}\n'
        '{"prompt": "a tree", "model": "2k", "n": 0}\n'
    )
    out = tmp_path / "out"
    code = await main_in_thread("batch", str(jobs), "--out", str(out), "--dry-run")
    assert code == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "jobs.jsonl:2: input image '" + str(tmp_path / "dog.png") + "' does not exist",
        "jobs.jsonl:3: not valid JSON: Expecting value (column 1)",
        "jobs.jsonl:5: n must be a whole number of at least 1, not 0",
    ]
    assert lines[3] == "jobs.jsonl: 2 valid jobs, 3 bad lines; nothing was sent"
    assert lines[4].split() == ["tier", "jobs", "images", "inputs", "estimated"]
    assert lines[5].split() == ["1K", "1", "2", "0", "$0.2680"]
    assert lines[6].split() == ["4K", "1", "1", "1", "$0.2411"]
    assert lines[7].split() == ["total", "2", "3", "1", "$0.5091"]
    assert relay.generation_count == 0
    assert not out.exists()


async def test_a_dry_run_of_a_folder_quotes_what_the_next_run_sends(relay, tmp_path, capsys):
    """With a manifest in --out, a dry run also says what the batch has cost so far and quotes
    only the jobs the next run would send; with --max-cost, whether they fit. All valid: 0."""
    write_prompts(tmp_path, 5)
    args = ("batch", "jobs.txt", "--out", "out", "--base-url", relay.url, "--concurrency", "1")
    relay.script(*[Fault.delay(0)] * 3, *[Fault.status(400)] * 2)
    await run_cli(*args, cwd=tmp_path)
    prices = tmp_path / "prices.toml"
    prices.write_text('"1K" = 0.1\n')
    code = await main_in_thread(
        "batch",
        str(tmp_path / "jobs.txt"),
        "--out",
        str(tmp_path / "out"),
        "--dry-run",
        "--prices",
        str(prices),
        "--max-cost",
        "0.45",
    )
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "jobs.txt: 5 valid jobs; nothing was sent"
    assert out[2].split() == ["1K", "5", "5", "0", "$0.5000"]
    assert out[4] == (
        "the output folder's batch has cost $0.4020 (estimated) so far; the next run sends "
        "2 jobs (the others are done or held back):"
    )
    assert out[6].split() == ["1K", "2", "2", "0", "$0.2000"]
    assert out[8] == (
        "cap $0.4500: $0.0480 left for about $0.2000: the run stops once the next job would "
        "not fit; a higher cap goes on"
    )
    assert relay.generation_count == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [("[tokens]\ninput = 1\n", "needs an input and an output"), ('"5K" = 1\n', "unknown key")],
)
async def test_a_bad_prices_file_is_one_line_and_exit_2(tmp_path, capsys, text, message):
    """--prices with a table that is no price table: one line naming the file, exit 2."""
    write_prompts(tmp_path, 1)
    (tmp_path / "prices.toml").write_text(text)
    code = await main_in_thread(
        "batch",
        str(tmp_path / "jobs.txt"),
        "--out",
        str(tmp_path / "out"),
        "--dry-run",
        "--prices",
        str(tmp_path / "prices.toml"),
    )
    assert code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"gemimg-async: {tmp_path / 'prices.toml'}: ")
    assert message in line


async def test_max_cost_stops_the_batch_and_says_how_to_go_on(relay, tmp_path, monkeypatch, capsys):
    """--max-cost: the summary shows the cost and the cap that stopped it, stderr how to go on,
    exit 1; the same command with a higher cap finishes."""
    monkeypatch.setenv("GEMIMG_API_KEY", API_KEY)
    write_prompts(tmp_path, 4)
    args = ["batch", str(tmp_path / "jobs.txt"), "--out", str(tmp_path / "out")]
    args += ["--base-url", relay.url, "--concurrency", "1", "--max-cost", "0.3"]
    assert await main_in_thread(*args) == 1
    captured = capsys.readouterr()
    assert "cost             $0.2680 (estimated)" in captured.out
    assert "the next request (about $0.1340) would take the total past the $0.3000 cap" in (
        captured.out
    )
    assert "run it again with a higher --max-cost" in captured.err
    assert relay.generation_count == 2
    args[-1] = "$0.60"
    assert await main_in_thread(*args) == 0
    assert relay.generation_count == 4
    assert "$0.5360 (estimated); this run $0.2680" in capsys.readouterr().out


# --- gallery and info --------------------------------------------------------------------------


async def test_batch_gallery_writes_the_page_at_the_end(relay, tmp_path):
    """--gallery: OUT/index.html with a thumbnail per image, said on stderr."""
    pytest.importorskip(
        "PIL", reason="the gallery needs Pillow: pip install 'gemimg-async[gallery]'"
    )
    write_prompts(tmp_path, 2)
    done = await run_cli(
        "batch", "jobs.txt", "--out", "out", "--base-url", relay.url, "--gallery", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr.decode()
    assert "gallery: out/index.html" in done.stderr.decode()
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert page.count('class="thumb"') == 2
    assert "$0.1340 (estimated)" in page
    assert len(list((tmp_path / "out" / ".thumbs").iterdir())) == 2


async def test_the_gallery_command_writes_a_folders_page_or_says_why_not(relay, tmp_path):
    """`gemimg-async gallery OUT` prints the page's path; a folder with no batch is one line
    and exit 2."""
    pytest.importorskip(
        "PIL", reason="the gallery needs Pillow: pip install 'gemimg-async[gallery]'"
    )
    write_prompts(tmp_path, 1)
    await run_cli("batch", "jobs.txt", "--out", "out", "--base-url", relay.url, cwd=tmp_path)
    done = await run_cli("gallery", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "out/index.html"
    empty = await run_cli("gallery", "nowhere", cwd=tmp_path)
    assert empty.returncode == 2
    assert empty.stderr.decode() == (
        "gemimg-async: nowhere/manifest.jsonl: no manifest, so no batch to show\n"
    )


async def test_no_metadata_saves_the_relays_bytes(relay, tmp_path):
    """`generate --no-metadata` writes the PNG exactly as the relay served it."""
    (served,) = await reference(relay, "a plain fox")
    done = await run_cli(
        "generate",
        "a plain fox",
        "--base-url",
        relay.url,
        "--format",
        "b64_json",
        "--no-metadata",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr.decode()
    (path,) = done.stdout.decode().split()
    assert (tmp_path / path).read_bytes() == served


# --- the other commands ------------------------------------------------------------------------


async def test_fake_server_and_generate_still_work(tmp_path):
    """`fake-server` serves on a free port and `generate` saves an image from it."""
    url_file = tmp_path / "url"
    server = await anyio.open_process(
        command("fake-server", "--port", "0", "--url-file", str(url_file)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    async with server:
        try:
            await wait_for(lambda: url_file.exists() and url_file.read_text())
            done = await run_cli(
                "generate",
                "a fox",
                "--base-url",
                url_file.read_text(),
                "--out",
                "out",
                cwd=tmp_path,
            )
        finally:
            server.terminate()
            await server.wait()
    assert done.returncode == 0, done.stderr.decode()
    (path,) = done.stdout.decode().split()
    assert is_complete_png(tmp_path / path)
