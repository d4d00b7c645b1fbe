"""The command line's options for several processes (`_sharing`): `batch --redis URL`, against a
real redis-server and the fake relay on 127.0.0.1.
"""

import json
import os
import subprocess
import sys

import anyio
import anyio.to_thread
import pytest

from gemimg_async._cli import main
from helpers import API_KEY, closed_port_url, manifest_lines, write_jobs

pytestmark = pytest.mark.anyio


@pytest.fixture
def slow_relay(relay):
    relay.latency = 0.3
    yield relay
    relay.latency = 0.0


def batch_command(jobs, out, relay, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "gemimg_async", "batch", str(jobs), "--out", str(out)),
        *("--base-url", relay.url, *extra),
    ]


async def test_two_batches_with_redis_share_their_concurrency(slow_relay, redis_server, tmp_path):
    """Two batch processes with --redis and --concurrency 2 never have more than 2 requests
    in flight together, and each saves all its jobs."""
    env = {**os.environ, "GEMIMG_API_KEY": API_KEY}
    env.pop("GEMIMG_BASE_URL", None)
    url = redis_server.url
    runs = []

    async def one(name: str) -> None:
        jobs = write_jobs(tmp_path, f"{name}.txt", [f"{name} fox {i}" for i in range(6)])
        command = batch_command(jobs, tmp_path / name, slow_relay, "--concurrency", "2")
        done = await anyio.run_process(
            [*command, "--redis", url], env=env, check=False, stderr=subprocess.PIPE
        )
        runs.append(done)

    async with anyio.create_task_group() as group:
        group.start_soon(one, "a")
        group.start_soon(one, "b")
    assert [run.returncode for run in runs] == [0, 0], [r.stderr.decode() for r in runs]
    assert slow_relay.max_in_flight == 2
    assert slow_relay.generation_count == 12
    for name in "ab":
        assert [line["status"] for line in manifest_lines(tmp_path / name)] == ["saved"] * 6


async def test_redis_without_the_extra_is_one_clear_line(relay, tmp_path, monkeypatch, capsys):
    """--redis where the redis package cannot be imported: exit 2 with one line saying how to
    install it, before anything is sent."""
    monkeypatch.setenv("GEMIMG_API_KEY", API_KEY)
    monkeypatch.setitem(sys.modules, "redis", None)
    jobs = write_jobs(tmp_path, "jobs.txt", ["a fox"])
    args = batch_command(jobs, tmp_path / "out", relay, "--redis", "redis://127.0.0.1:1/0")[3:]
    code = await anyio.to_thread.run_sync(main, args)
    err = capsys.readouterr().err
    assert code == 2
    said = "gemimg-async: --redis needs the redis package: pip install 'gemimg-async[redis]'"
    assert err.strip().splitlines() == [f"{said} (or leave --redis out)"]
    assert relay.generation_count == 0


def endpoints_file(folder, *tables: dict) -> str:
    """An endpoints TOML file of `tables`."""
    lines = []
    for table in tables:
        lines.append("[[endpoints]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path = folder / "endpoints.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


async def test_a_batch_over_endpoints_fails_over_and_names_them(relay, tmp_path, monkeypatch):
    """batch --endpoints: keys come from the variables the file names; jobs sent to a relay
    that is down move to the other; every job is saved, its manifest line naming where."""
    monkeypatch.setenv("RELAY_UP_KEY", API_KEY)
    monkeypatch.setenv("RELAY_DOWN_KEY", "sk-down")
    monkeypatch.delenv("GEMIMG_API_KEY", raising=False)
    file = endpoints_file(
        tmp_path,
        {"name": "down", "base_url": closed_port_url(), "api_key_env": "RELAY_DOWN_KEY"},
        {"name": "up", "base_url": relay.url, "api_key_env": "RELAY_UP_KEY"},
    )
    jobs = write_jobs(tmp_path, "jobs.txt", [f"a fox {i}" for i in range(6)])
    out = tmp_path / "out"
    args = ["batch", str(jobs), "--out", str(out), "--endpoints", file, "--concurrency", "1"]
    code = await anyio.to_thread.run_sync(main, args)
    assert code == 0
    lines = manifest_lines(out)
    assert [line["status"] for line in lines] == ["saved"] * 6
    assert {line["endpoint"] for line in lines} == {"up"}
    assert relay.generation_count == 6


async def test_an_unset_key_variable_is_one_clear_line(tmp_path, monkeypatch, capsys):
    """An endpoint whose api_key_env variable is unset: exit 2, one line naming the file, the
    endpoint and the variable, nothing sent."""
    monkeypatch.delenv("RELAY_A_KEY", raising=False)
    file = endpoints_file(
        tmp_path, {"name": "a", "base_url": "https://a.example", "api_key_env": "RELAY_A_KEY"}
    )
    jobs = write_jobs(tmp_path, "jobs.txt", ["a fox"])
    args = ["batch", str(jobs), "--out", str(tmp_path / "out"), "--endpoints", file]
    code = await anyio.to_thread.run_sync(main, args)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"gemimg-async: --endpoints {file}: endpoint a: the variable RELAY_A_KEY is not set"
    ]
