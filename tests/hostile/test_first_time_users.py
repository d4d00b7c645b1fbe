"""Hardening issue, "First-time users": what a new user meets, tried as a new user would.

Bullet -> tests (each failed before the fix; see tests/hostile/README.md):

- tracebacks for user mistakes -> `test_a_user_mistake_is_one_line_and_exit_2`,
  `test_debug_shows_the_traceback`
- job files: encodings, empty prompts, comments, an empty file, stdin ->
  `test_a_job_file_with_a_bom_is_read_in_its_encoding`, `test_encoding_reads_a_gbk_job_file`,
  `test_a_job_file_that_is_not_utf8_is_said_once`, `test_a_prompt_of_nothing_visible_is_invalid`,
  `test_a_txt_line_starting_with_hash_is_a_comment`, `test_an_empty_job_file_exits_2`,
  `test_dash_reads_jobs_from_stdin`
- a changed job silently skipped -> `test_a_changed_job_is_reported_and_redone_only_when_asked`,
  `test_run_batch_reports_changed_jobs`
- `--version`, `--allow-insecure-http`, flag names, `-v` -> `test_version`,
  `test_allow_insecure_http`, `test_messages_name_the_flag`,
  `test_verbose_logs_every_request`
- a double Ctrl-C records too little, too late ->
  `test_a_second_ctrl_c_records_what_was_sent_and_says_how_to_resend`
- file names -> `test_a_one_off_generation_is_named_after_its_prompt`
- `result.save()` and `result.paths` -> `test_a_saved_result_knows_its_paths`
- a client across two `asyncio.run()` -> `test_a_client_used_on_a_second_event_loop_says_so`
- README and demo -> `test_readme_examples_compile_as_scripts`,
  `test_readme_offline_example_runs_as_written`, `test_the_demo_uses_only_the_public_api`,
  `test_the_demo_run_twice_feeds_back_no_output_of_its_own`
"""

import asyncio
import gc
import json
import os
import re
import shutil
import signal
import socket
import sys
import warnings
from pathlib import Path

import anyio
import pytest

import gemimg_async as gi
from gemimg_async.testing import FakeClock, FakeRelay
from hostile.servers import SilentRelay
from hostile.support import (
    API_KEY,
    child_env,
    command,
    main_in_thread,
    run_cli,
    unwritable_folder,
    wait_for,
)

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


def manifest(out: Path) -> dict[str, dict]:
    lines = (out / gi.MANIFEST_NAME).read_text(encoding="utf-8").splitlines()
    return {doc["id"]: doc for doc in map(json.loads, lines)}


def prompts(relay: FakeRelay) -> list[str]:
    return [request.prompt for request in relay.requests]


def collect(path: Path, **kwargs) -> tuple[list[gi.ImageRequest], list[gi.BadLine]]:
    bad: list[gi.BadLine] = []
    return list(gi.read_jobs(path, on_bad_line=bad.append, **kwargs)), bad


# --- user mistakes: one line, exit 2 -----------------------------------------------------------


def _a_file(tmp_path: Path) -> str:
    (tmp_path / "notes.txt").write_text("not a folder\n")
    return str(tmp_path / "notes.txt")


def _under_a_file(tmp_path: Path) -> str:
    return _a_file(tmp_path) + "/images"


def _unwritable(tmp_path: Path) -> str:
    return str(unwritable_folder(tmp_path))


MISTAKES = [
    pytest.param("batch", _a_file, id="batch-out-a-file"),
    pytest.param("batch", _under_a_file, id="batch-out-under-a-file"),
    pytest.param("batch", _unwritable, id="batch-out-unwritable"),
    pytest.param("generate", _a_file, id="generate-out-a-file"),
    pytest.param("generate", _under_a_file, id="generate-out-under-a-file"),
]


def _args(kind: str, out: str, base_url: str) -> list[str]:
    what = ["batch", "jobs.txt"] if kind == "batch" else ["generate", "a fox"]
    return [*what, "--out", out, "--base-url", base_url]


@pytest.mark.parametrize(("kind", "out"), MISTAKES)
async def test_a_user_mistake_is_one_line_and_exit_2(relay, tmp_path, kind, out):
    """`--out` naming a file, a path under a file or an unwritable folder: one line on stderr
    saying what to do, exit status 2, no traceback, nothing sent."""
    (tmp_path / "jobs.txt").write_text("a fox\n")
    done = await run_cli(*_args(kind, out(tmp_path), relay.url), cwd=tmp_path)
    err = done.stderr.decode()
    assert "Traceback" not in err, err.strip().splitlines()[-1]
    assert done.returncode == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert prompts(relay) == []


FULL_DISK = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # every write to a file fails, as on a full disk
sys.argv = ["gemimg-async", *sys.argv[1:]]
runpy.run_module("gemimg_async", run_name="__main__")
"""


async def test_a_disk_full_at_start_is_one_line_and_exit_2(relay, tmp_path):
    """A batch whose output folder takes no bytes at start (here: a file-size limit of 0, the
    one way to fill a disk without privileges) says so in one line and exits 2, sending
    nothing."""
    (tmp_path / "jobs.txt").write_text("a fox\n")
    args = ["batch", "jobs.txt", "--out", "out", "--base-url", relay.url]
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-c", FULL_DISK, *args], cwd=tmp_path, env=child_env(), check=False
        )
    err = done.stderr.decode()
    assert "Traceback" not in err, err.strip().splitlines()[-1]
    assert done.returncode == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert prompts(relay) == []


async def test_debug_shows_the_traceback(relay, tmp_path):
    """With `--debug` (before the command, like -v) a user mistake shows its traceback too."""
    (tmp_path / "jobs.txt").write_text("a fox\n")
    args = _args("batch", _a_file(tmp_path), relay.url)
    done = await run_cli("--debug", *args, cwd=tmp_path)
    err = done.stderr.decode()
    assert "Traceback" in err, err
    assert done.returncode == 2


# --- job files ---------------------------------------------------------------------------------

PROMPTS = ["a red fox in the snow", "一只戴眼镜的橘猫", "café au lait, l'après-midi"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_job_file_with_a_bom_is_read_in_its_encoding(tmp_path, encoding, suffix):
    """A job file that starts with a UTF-16 or UTF-32 byte-order mark is read in that encoding:
    the prompts come out as written (not NUL-riddled garbage sent and billed). (A UTF-8 BOM is
    skipped already.)"""
    path = tmp_path / f"jobs{suffix}"
    lines = PROMPTS if suffix == ".txt" else [json.dumps({"prompt": p}) for p in PROMPTS]
    text = "\n".join(lines) + "\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data  # Python writes the big-endian BOM only for "utf-16"
    path.write_bytes(data)
    jobs, bad = collect(path)
    assert [job.prompt for job in jobs] == PROMPTS
    assert bad == []


GBK_PROMPTS = ["一只在雪地里的红狐狸", "水彩风格的橘猫"]


async def test_encoding_reads_a_gbk_job_file(relay, tmp_path, monkeypatch):
    """`--encoding gbk` reads a GBK job file; its prompts reach the relay as written."""
    monkeypatch.setenv("GEMIMG_API_KEY", API_KEY)
    (tmp_path / "jobs.txt").write_bytes("\n".join(GBK_PROMPTS).encode("gbk") + b"\n")
    code = await main_in_thread(
        "batch", str(tmp_path / "jobs.txt"), "--out", str(tmp_path / "out"),
        "--base-url", relay.url, "--encoding", "gbk",
    )  # fmt: skip
    assert code == 0
    assert sorted(prompts(relay)) == sorted(GBK_PROMPTS)


@pytest.mark.parametrize(
    ("encoding", "lines"),
    [("gbk", GBK_PROMPTS * 3), ("latin-1", ["café crème", "crème brûlée", "pâté en croûte"] * 2)],
)
async def test_a_job_file_that_is_not_utf8_is_said_once(  # noqa: PLR0917 - pytest fills these
    relay, tmp_path, capsys, monkeypatch, encoding, lines
):
    """A job file in another encoding is said once ("this file is not UTF-8; try --encoding
    ..."), not as one bad line per line; it exits 2 and sends nothing."""
    monkeypatch.setenv("GEMIMG_API_KEY", API_KEY)
    (tmp_path / "jobs.txt").write_bytes("\n".join(lines).encode(encoding) + b"\n")
    code = await main_in_thread(
        "batch", str(tmp_path / "jobs.txt"), "--out", str(tmp_path / "out"),
        "--base-url", relay.url,
    )  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("--encoding") == 1, err
    assert "UTF-8" in err
    assert err.count("jobs.txt:") <= 1, err  # not a line per line
    assert code == 2, err
    assert prompts(relay) == []


INVISIBLE = ["\u200b", "\x00\x00", " \u200b\ufeff\u2060 \t", "\u200c\u200d\x00 "]


@pytest.mark.parametrize("prompt", INVISIBLE, ids=ascii)
async def test_a_prompt_of_nothing_visible_is_invalid(relay, tmp_path, prompt):
    """A prompt that is empty once whitespace, NULs and zero-width characters are stripped is an
    InvalidPromptError before sending, and a bad line in a job file."""
    async with gi.Client(API_KEY, relay.url, clock=FakeClock()) as client:
        with pytest.raises(gi.InvalidPromptError):
            await client.generate(prompt)
    assert prompts(relay) == []
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"prompt": prompt}) + "\n" + json.dumps({"prompt": "a fox"}) + "\n")
    jobs, bad = collect(path)
    assert [job.prompt for job in jobs] == ["a fox"]
    assert [line.line for line in bad] == [1]


def test_a_txt_line_starting_with_hash_is_a_comment(tmp_path):
    """In a .txt job file, a line starting with # is a comment, not a prompt."""
    path = tmp_path / "jobs.txt"
    path.write_text("# posters for the tea house\na matcha bowl\n#   second batch\na kettle\n")
    jobs, bad = collect(path)
    assert [job.prompt for job in jobs] == ["a matcha bowl", "a kettle"]
    assert bad == []


@pytest.mark.parametrize(
    ("name", "content"),
    [("jobs.txt", b""), ("jobs.jsonl", b""), ("jobs.txt", b"\n  \n\n"), ("jobs.jsonl", b"\n")],
    ids=["empty-txt", "empty-jsonl", "blank-txt", "blank-jsonl"],
)
async def test_an_empty_job_file_exits_2(relay, tmp_path, name, content):
    """A job file with no job in it exits 2 with a message naming it."""
    (tmp_path / name).write_bytes(content)
    done = await run_cli("batch", name, "--out", "out", "--base-url", relay.url, cwd=tmp_path)
    err = done.stderr.decode()
    assert done.returncode == 2, (done.stdout.decode(), err)
    assert name in err
    assert "Traceback" not in err


async def test_dash_reads_jobs_from_stdin(relay, tmp_path):
    """`batch -` reads the jobs from stdin (here one prompt per line, as in a .txt file)."""
    done = await run_cli(
        "batch", "-", "--out", "out", "--base-url", relay.url,
        cwd=tmp_path, input=b"a fox\na cat\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(prompts(relay)) == ["a cat", "a fox"]


# --- a job changed under its id ----------------------------------------------------------------

CHANGES = [
    pytest.param({"prompt": "a cat"}, id="prompt"),
    pytest.param({"size": "16:9"}, id="size"),
    pytest.param({"model": "2k"}, id="model"),
    pytest.param({"n": 2}, id="n"),
]


@pytest.mark.parametrize("change", CHANGES)
async def test_a_changed_job_is_reported_and_redone_only_when_asked(
    relay, tmp_path, capsys, monkeypatch, change
):
    """Jobs whose id was kept but whose prompt or options changed are neither silently skipped
    nor silently billed again: the run says how many changed and names --redo-changed, which
    then sends each once."""
    monkeypatch.setenv("GEMIMG_API_KEY", API_KEY)
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    docs = [{"id": f"poster-{i}", "prompt": f"a fox {i}"} for i in range(4)]
    jobs.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    args = ("batch", str(jobs), "--out", str(out), "--base-url", relay.url)
    assert await main_in_thread(*args) == 0
    docs[:3] = [{**doc, **change} for doc in docs[:3]]
    jobs.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    capsys.readouterr()
    relay.reset()

    await main_in_thread(*args)
    err = capsys.readouterr().err
    assert prompts(relay) == [], "a changed job was billed again without being asked"
    assert re.search(r"\b3 jobs? changed", err), f"3 changed jobs skipped silently: {err!r}"
    assert "--redo-changed" in err
    await main_in_thread(*args, "--redo-changed")
    assert len(relay.requests) == 3
    states = manifest(out)
    for doc in docs[:3]:
        asked, entry = gi.ImageRequest.from_json(doc), states[doc["id"]]
        assert entry["status"] == "saved"
        assert (entry["prompt"], entry["size"], entry["model"]) == (
            asked.prompt,
            asked.size,
            asked.model,
        )
        assert len(entry["paths"]) == asked.n
    relay.reset()
    assert await main_in_thread(*args) == 0
    assert prompts(relay) == []
    assert "changed" not in capsys.readouterr().err


async def test_run_batch_reports_changed_jobs(relay, client, tmp_path):
    """From Python, a changed job is counted (proposed: BatchSummary.changed) and sent again
    only with redo_changed=True (proposed), once."""
    out = tmp_path / "out"
    await gi.run_batch(client, [gi.ImageRequest("a fox", id="poster")], out)
    relay.reset()
    changed = [gi.ImageRequest("a fox", id="poster", size="16:9")]
    summary = await gi.run_batch(client, changed, out)
    assert relay.requests == []
    assert summary.changed == 1
    summary = await gi.run_batch(client, changed, out, redo_changed=True)
    assert [r.size for r in relay.requests] == ["16:9"]
    assert summary.ok


# --- flags -------------------------------------------------------------------------------------


async def test_version(tmp_path):
    """`gemimg-async --version` prints the version and exits 0."""
    done = await run_cli("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert gi.__version__ in done.stdout.decode()


async def test_allow_insecure_http(relay, tmp_path):
    """http:// to a host that is not loopback needs `--allow-insecure-http`, and works with it
    (0.0.0.0 reaches this machine's relay and is not a loopback address)."""
    port = relay.url.rsplit(":", 1)[1]
    args = ("generate", "a fox", "--base-url", f"http://0.0.0.0:{port}", "--out", "out")
    refused = await run_cli(*args, cwd=tmp_path)
    assert refused.returncode == 2
    assert "--allow-insecure-http" in refused.stderr.decode()
    done = await run_cli(*args, "--allow-insecure-http", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert prompts(relay) == ["a fox"]


@pytest.mark.parametrize(
    ("args", "flag", "python_name"),
    [
        (["--concurrency", "0"], "--concurrency", r"max_concurrency"),
        (["--rpm", "0"], "--rpm", r"(?<!-)\brpm must"),
        (
            ["--base-url", "http://relay.example.com"],
            "--allow-insecure-http",
            r"allow_insecure_http",
        ),
        (["--api-key", ""], "--api-key", r"api_key="),
    ],
)
async def test_messages_name_the_flag(  # noqa: PLR0917 - pytest fills these by name
    tmp_path, capsys, monkeypatch, args, flag, python_name
):
    """A bad flag value is reported with the CLI flag's name, not the Python argument's."""
    monkeypatch.delenv("GEMIMG_API_KEY", raising=False)
    (tmp_path / "jobs.txt").write_text("a fox\n")
    base = ["--base-url", "http://127.0.0.1:9", "--api-key", API_KEY]
    jobs, out = str(tmp_path / "jobs.txt"), str(tmp_path / "out")
    code = await main_in_thread("batch", jobs, "--out", out, *base, *args)
    err = capsys.readouterr().err
    assert code == 2
    assert flag in err, err
    assert not re.search(python_name, err), err


async def test_verbose_logs_every_request(relay, tmp_path, capsys, monkeypatch):
    """`-v` ("log every request") shows a line per request: method, URL, status, request id."""
    monkeypatch.setenv("GEMIMG_API_KEY", API_KEY)
    code = await main_in_thread(
        "-v", "generate", "a fox", "--base-url", relay.url, "--out", str(tmp_path)
    )
    err = capsys.readouterr().err
    assert code == 0
    [sent] = relay.requests
    parts = ("POST", "/v1/images/generations", "200", sent.request_id)
    assert any(all(part in line for part in parts) for line in err.splitlines()), err


# --- a double Ctrl-C ---------------------------------------------------------------------------

ANSWER_THAT_STALLS = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: req-stall-{n}\r\n"
    b'Content-Length: 100000\r\n\r\n{"created": 1, "data": ['
)


async def test_a_second_ctrl_c_records_what_was_sent_and_says_how_to_resend(tmp_path):
    """Jobs abandoned by a second Ctrl-C are recorded as sent (attempts 1, the request id the
    relay gave), and the run says at once that the next run holds them back and how to send
    them again (--retry-unknown)."""
    (tmp_path / "jobs.txt").write_text("".join(f"job {i}\n" for i in range(3)))
    async with SilentRelay(head=ANSWER_THAT_STALLS) as relay:
        args = ("batch", "jobs.txt", "--out", "out", "--base-url", relay.url, "--concurrency", "3")
        process = await anyio.open_process(command(*args), cwd=tmp_path, env=child_env())
        err = bytearray()
        async with process:
            await wait_for(lambda: relay.answered == 3)  # sent, answered, the body stalled
            process.send_signal(signal.SIGINT)
            assert process.stderr is not None
            with anyio.fail_after(20):
                while b"Ctrl-C again" not in err:
                    err += await process.stderr.receive()
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(20):
                async for chunk in process.stderr:
                    err += chunk
                await process.wait()
        ids = {f"req-stall-{n}": body["prompt"] for n, body in relay.bodies.items()}
    text = err.decode()
    assert process.returncode == 130, text
    lines = manifest(tmp_path / "out").values()
    assert [line["status"] for line in lines] == ["outcome_unknown"] * 3
    assert {(line["prompt"], line["attempts"]) for line in lines} == {
        (f"job {i}", 1) for i in range(3)
    }
    assert {(line["prompt"], tuple(line["request_ids"])) for line in lines} == {
        (prompt, (request_id,)) for request_id, prompt in ids.items()
    }
    assert "--retry-unknown" in text.split("Ctrl-C again", 1)[1], text


# --- results -----------------------------------------------------------------------------------


async def test_a_one_off_generation_is_named_after_its_prompt(relay, client, tmp_path):
    """generate(save_to=) names files with a slug of the prompt and a short unique part
    (a-lighthouse-at-dusk_3f9c_0.png), not a timestamp; two calls never share a name."""
    first = await client.generate("A lighthouse, at dusk!", n=2, save_to=tmp_path)
    second = await client.generate("A lighthouse, at dusk!", save_to=tmp_path)
    pattern = re.compile(r"a-lighthouse-at-dusk[_-][0-9a-z]{4,12}_(\d)\.png")
    names = [path.name for path in (*first.paths, *second.paths)]
    assert all(pattern.fullmatch(name) for name in names), names
    assert len(set(names)) == 3


async def test_a_saved_result_knows_its_paths(relay, client, tmp_path):
    """After `save()`, the result knows where its images are: save() returns a new result whose
    paths are the files, or the result's own paths are."""
    result = await client.generate("a fox", n=2)
    returned = await result.save(tmp_path)
    saved = returned if isinstance(returned, gi.GenerationResult) else result
    assert sorted(saved.paths) == sorted(tmp_path.iterdir())
    assert len(saved.paths) == 2


# --- one client, one event loop ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_client_used_on_a_second_event_loop_says_so():
    """A client reused in a second asyncio.run() raises our error saying a client belongs to
    the event loop it was first used on (not aiohttp's RuntimeError)."""
    port = _free_port()
    client = gi.Client(API_KEY, f"http://127.0.0.1:{port}", clock=FakeClock())

    async def use(client: gi.Client) -> gi.GenerationResult:
        async with FakeRelay(api_keys=API_KEY, port=port):
            return await asyncio.wait_for(client.generate("a fox"), 10)

    assert asyncio.run(use(client)).images
    try:
        asyncio.run(use(client))
    except Exception as error:  # noqa: BLE001 - kept as text: its frames hold the client
        raised, ours = f"{type(error).__name__}: {error}", isinstance(error, gi.GemimgError)
    else:
        raised, ours = "nothing", False
    with warnings.catch_warnings():  # its session can be closed on neither loop: let it go
        warnings.simplefilter("ignore", ResourceWarning)
        del client
        gc.collect()
    assert ours, raised
    assert "loop" in raised


# --- README and demo ---------------------------------------------------------------------------


def _python_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", readme, re.DOTALL)


def test_readme_examples_compile_as_scripts():
    """Every Python example of the README is a script as written: it compiles, and one that
    awaits shows the asyncio.run(main()) around it (a test file for pytest aside: pytest runs
    it, and tests/testing/test_plugin.py runs it as written)."""
    blocks = _python_blocks()
    assert len(blocks) >= 3
    for block in blocks:
        compile(block, "README.md", "exec")
        if ("await" in block or "async with" in block) and "def test_" not in block:
            assert "asyncio.run(" in block, block


async def test_readme_offline_example_runs_as_written(tmp_path):
    """The README's offline example (the fake relay) runs as written, to exit 0."""
    [block] = [block for block in _python_blocks() if "FakeRelay" in block]
    script = tmp_path / "example.py"
    script.write_text(block)
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, str(script)], cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr.decode()


def test_the_demo_uses_only_the_public_api():
    """examples/ use the public API only: no gemimg_async._private module."""
    for path in (REPO / "examples").iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"gemimg_async\._", text), path.name


async def test_the_demo_run_twice_feeds_back_no_output_of_its_own(tmp_path):
    """`make demo` run twice: both runs succeed, and the second's image-to-image input is one of
    the batch's images, not the first run's own generated output."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "gemimg-async").write_text(
        f'#!/bin/sh\necho "$*" >> "{calls}"\nexec "{sys.executable}" -m gemimg_async "$@"\n'
    )
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMIMG_")}
    for run in (1, 2):
        with anyio.fail_after(60):
            done = await anyio.run_process(
                ["bash", "examples/demo.sh", str(bin_dir)], cwd=tmp_path, env=env, check=False
            )
        assert done.returncode == 0, (run, done.stdout.decode()[-2000:], done.stderr.decode())
    generations = [line.split() for line in calls.read_text().splitlines()]
    [*_, second] = [args for args in generations if args[0] == "generate"]
    second_input = second[second.index("--image") + 1]
    batch_images = {name for doc in manifest(tmp_path / "out").values() for name in doc["paths"]}
    assert Path(second_input).name in batch_images, (second_input, sorted(batch_images))
