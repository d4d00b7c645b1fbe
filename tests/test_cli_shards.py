"""The command line past one machine (`_cli_shards`): `batch --shard K/N` in N real processes
sharing one folder, and `status` over their manifests. The processes run `python -m
gemimg_async` against the session's fake relay, awaited with anyio so the relay keeps answering
on this event loop."""

import collections
import json
import os
import sys
from pathlib import Path
from subprocess import DEVNULL

import anyio
import pytest

from gemimg_async import ManifestEntry
from gemimg_async._cli import main
from gemimg_async._objstore import open_store
from gemimg_async._shards import Shard
from helpers import API_KEY, is_complete_png, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("restore_logging")]


def write_jobs(folder: Path, count: int) -> Path:
    path = folder / "jobs.jsonl"
    lines = (json.dumps({"id": f"job-{i:03d}", "prompt": f"a harbour, {i}"}) for i in range(count))
    path.write_text("\n".join(lines) + "\n")
    return path


def batch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gemimg_async", "batch", *args]


def child_env() -> dict[str, str]:
    env = {**os.environ, "GEMIMG_API_KEY": API_KEY}
    env.pop("GEMIMG_BASE_URL", None)
    return env


async def status_of(capsys, *args: str) -> tuple[int, str]:
    code = await anyio.to_thread.run_sync(main, ["status", *args])
    return code, capsys.readouterr().out


async def test_n_processes_share_one_folder_and_status_merges_them(relay, tmp_path, capsys):
    """Three `batch --shard K/3` processes at once into one folder: every job sent once, each
    in its own shard's manifest, every image whole; `status` says all saved and exits 0."""
    relay.latency = 0.02
    jobs = write_jobs(tmp_path, 30)
    out = tmp_path / "out"
    results = {}

    async def run(k: int) -> None:
        args = ("jobs.jsonl", "--out", "out", "--base-url", relay.url, "--shard", f"{k}/3")
        results[k] = await anyio.run_process(
            batch_command(*args), cwd=tmp_path, env=child_env(), check=False
        )

    try:
        async with anyio.create_task_group() as group:
            for k in (1, 2, 3):
                group.start_soon(run, k)
    finally:
        relay.latency = 0.0
    for k, done in results.items():
        assert done.returncode == 0, (k, done.stderr.decode())
    assert len(relay.requests) == 30
    assert len({r.prompt for r in relay.requests}) == 30
    for k in (1, 2, 3):
        lines = (out / f"manifest.{k}-of-3.jsonl").read_text().splitlines()
        ids = {json.loads(line)["id"] for line in lines}
        assert ids == {f"job-{i:03d}" for i in range(30) if Shard(k, 3).owns(f"job-{i:03d}")}
    images = sorted(out.glob("*.png"))
    assert len(images) == 30
    assert all(is_complete_png(path) for path in images)

    code, said = await status_of(capsys, str(out), str(jobs))
    assert code == 0
    assert "saved                   30" in said
    assert "left                     0" in said
    code, said = await status_of(capsys, str(out), str(jobs), "--json")
    doc = json.loads(said)
    assert code == 0
    assert (doc["jobs"], doc["saved"], doc["left"], doc["duplicates"]) == (30, 30, 0, [])
    assert sorted(doc["shards"]) == [f"manifest.{k}-of-3.jsonl" for k in (1, 2, 3)]
    assert sum(s["saved"] for s in doc["shards"].values()) == 30


async def test_status_of_a_batch_not_done_exits_1_and_names_what_is_left(
    relay, tmp_path, capsys, monkeypatch
):
    """One shard of two run: status counts the other's jobs left, per shard (the one not started
    too) and in total, names them, and exits 1."""
    monkeypatch.setenv("GEMIMG_API_KEY", API_KEY)
    jobs = write_jobs(tmp_path, 10)
    out = tmp_path / "out"
    code = await anyio.to_thread.run_sync(
        main, ["batch", str(jobs), "--out", str(out), "--base-url", relay.url, "--shard", "1/2"]
    )
    assert code == 0
    capsys.readouterr()
    mine = [f"job-{i:03d}" for i in range(10) if Shard(1, 2).owns(f"job-{i:03d}")]
    code, said = await status_of(capsys, str(out), str(jobs), "--json")
    doc = json.loads(said)
    assert code == 1
    assert (doc["saved"], doc["left"]) == (len(mine), 10 - len(mine))
    assert doc["shards"]["manifest.1-of-2.jsonl"]["left"] == 0
    assert doc["shards"]["manifest.2-of-2.jsonl"] == {
        **dict.fromkeys(("saved", "refused", "failed", "outcome_unknown"), 0),
        "left": 10 - len(mine),
    }  # not started yet: no manifest, all its jobs left
    assert set(doc["missing"]) == {f"job-{i:03d}" for i in range(10)} - set(mine)
    code, said = await status_of(capsys, str(out))
    assert code == 0  # without the job file, what is recorded is all saved
    assert "give the job file" in said


@pytest.mark.parametrize(
    ("args", "says"),
    [(["nowhere"], "is no folder"), (["empty"], "holds no manifest")],
)
async def test_status_usage_mistakes_exit_2(tmp_path, capsys, monkeypatch, args, says):
    """A folder that does not exist, or holds no manifest, is one line on stderr and exit 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    code = await anyio.to_thread.run_sync(main, ["status", *args])
    assert code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--dry-run", "--gallery"])
def test_dry_run_and_gallery_refuse_an_object_storage_output(tmp_path, capsys, flag):
    """--dry-run and --gallery read a folder: with --out s3://... they say so and exit 2."""
    jobs = write_jobs(tmp_path, 2)
    code = main(["batch", str(jobs), "--out", "s3://bucket/out", flag])
    assert code == 2
    assert "s3://bucket/out" in capsys.readouterr().err


@pytest.mark.parametrize("shard", ["0/3", "4/3", "3", "a/b"])
def test_a_bad_shard_flag_exits_2_naming_it(tmp_path, capsys, shard):
    """--shard K/N that is no shard of N is a usage mistake, said before anything is sent."""
    with pytest.raises(SystemExit) as caught:
        main(["batch", str(tmp_path / "jobs.txt"), "--out", str(tmp_path), "--shard", shard])
    assert caught.value.code == 2
    assert "--shard" in capsys.readouterr().err


async def test_status_reads_an_object_storage_output(s3, tmp_path, capsys):
    """`status s3://bucket/prefix` merges the shards' manifests kept as objects there."""
    store = open_store(s3)
    saved = ManifestEntry(id="job-000", status="saved", paths=("job-000_0.png",))
    await store.append(Shard(1, 2).manifest_name, saved.to_line())
    code, said = await status_of(capsys, s3, str(write_jobs(tmp_path, 2)), "--json")
    doc = json.loads(said)
    assert code == 1
    assert (doc["jobs"], doc["saved"], doc["left"], doc["missing"]) == (2, 1, 1, ["job-001"])


async def test_a_shard_killed_mid_run_then_rerun_pays_for_nothing_twice(relay, tmp_path, capsys):
    """Two shard processes; one is killed (-9) with requests in flight while the other runs on.
    Run again, the killed shard sends none of what it sent before; status then counts every job
    once, the killed run's jobs in flight as outcome_unknown (some may not have reached the
    relay: logged sent, then killed before the POST)."""
    relay.latency = 0.1
    jobs = write_jobs(tmp_path, 24)
    out = tmp_path / "out"

    def args(k: int) -> list[str]:
        return batch_command(
            "jobs.jsonl", "--out", "out", "--base-url", relay.url, "--shard", f"{k}/2",
            "--concurrency", "2",
        )  # fmt: skip

    try:
        killed = await anyio.open_process(
            args(1), cwd=tmp_path, env=child_env(), stdout=DEVNULL, stderr=DEVNULL
        )
        async with anyio.create_task_group() as group:
            group.start_soon(
                lambda: anyio.run_process(args(2), cwd=tmp_path, env=child_env(), check=True)
            )
            manifest = out / Shard(1, 2).manifest_name
            await wait_for(lambda: manifest.exists() and manifest.read_bytes().count(b"\n") >= 3)
            killed.kill()
            await killed.wait()
            await killed.aclose()
        sent_before = collections.Counter(r.prompt for r in relay.requests)
        again = await anyio.run_process(args(1), cwd=tmp_path, env=child_env(), check=False)
    finally:
        relay.latency = 0.0
    assert again.returncode in (0, 1), again.stderr.decode()
    sent = collections.Counter(r.prompt for r in relay.requests)
    assert set(sent.values()) == {1}  # nothing sent twice
    assert len(sent_before) < len(sent) <= 24  # a job killed before its POST left is not sent
    code, said = await status_of(capsys, str(out), str(jobs), "--json")
    doc = json.loads(said)
    assert (doc["jobs"], doc["left"], doc["duplicates"]) == (24, 0, [])
    assert doc["saved"] + doc["outcome_unknown"] == 24
    assert doc["saved"] <= len(sent)
    assert code == (1 if doc["outcome_unknown"] else 0)


async def test_a_shard_into_s3_killed_mid_run_then_rerun_pays_for_nothing_twice(
    relay, s3, tmp_path, capsys
):
    """`batch --out s3://...` killed (-9) with requests in flight, then run again: every job
    sent at most once (the send log was in the store before each POST), every job once in the
    status, and every image in the store a whole PNG."""
    relay.latency = 0.1
    jobs = write_jobs(tmp_path, 12)
    args = batch_command(
        "jobs.jsonl", "--out", s3, "--base-url", relay.url, "--shard", "1/1", "--concurrency", "2"
    )
    store = open_store(s3)
    manifest = Shard(1, 1).manifest_name
    try:
        killed = await anyio.open_process(
            args, cwd=tmp_path, env=child_env(), stdout=DEVNULL, stderr=DEVNULL
        )
        try:
            await wait_for(lambda: len(relay.requests) >= 3 and relay.in_flight >= 1)
        finally:
            killed.kill()
            await killed.wait()
            await killed.aclose()
        sent_before = collections.Counter(r.prompt for r in relay.requests)
        again = await anyio.run_process(args, cwd=tmp_path, env=child_env(), check=False)
    finally:
        relay.latency = 0.0
    assert again.returncode in (0, 1), again.stderr.decode()
    sent = collections.Counter(r.prompt for r in relay.requests)
    assert set(sent.values()) == {1}  # nothing sent twice
    assert len(sent_before) < len(sent) <= 12
    code, said = await status_of(capsys, s3, str(jobs), "--json")
    doc = json.loads(said)
    assert (doc["jobs"], doc["left"], doc["duplicates"]) == (12, 0, [])
    assert doc["saved"] + doc["outcome_unknown"] == 12
    assert doc["saved"] <= len(sent)
    assert code == (1 if doc["outcome_unknown"] else 0)
    for name in await store.images():
        data = await store.run(store.fs.cat_file, store.path(name))
        assert data.startswith(b"\x89PNG")
        assert data.endswith(b"IEND\xaeB`\x82")
    assert await store.logs() == [manifest]
