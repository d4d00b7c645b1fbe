"""`run_shard`, what each Ray task runs, shares one key's limits through Redis with `redis_url`:
tried without Ray, its shards run at once in threads of this process, each with its own loop."""

import json
import threading

import pytest

from gemimg_async._exceptions import ConfigurationError
from gemimg_async._shards import Shard
from gemimg_async.ray import ShardRun, run_shard, run_sharded
from gemimg_async.testing import FakeRelay, RelayThread
from helpers import API_KEY


def _runs(tmp_path, relay_url, redis_url):
    jobs = tmp_path / "jobs.jsonl"
    lines = [json.dumps({"id": f"job-{i:02d}", "prompt": f"a heron, {i}"}) for i in range(16)]
    jobs.write_text("\n".join(lines) + "\n")
    options = {"api_key": API_KEY, "base_url": relay_url, "max_concurrency": 3}
    return [
        ShardRun(
            shard=Shard(k, 2),
            jobs=str(jobs),
            out=str(tmp_path / "out"),
            client_options=options,
            redis_url=redis_url,
        )
        for k in (1, 2)
    ]


def _run_together(runs):
    summaries = {}
    threads = [
        threading.Thread(target=lambda run=run: summaries.update({run.shard: run_shard(run)}))
        for run in runs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return summaries


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "alone"])
def test_shards_share_max_concurrency_through_redis(redis_server, tmp_path, shared):
    """Two shards of max_concurrency=3 each: with redis_url the slow relay never has more than 3
    of their requests at once; without it, each shard fills its own 3."""
    relay = FakeRelay(api_keys=frozenset({API_KEY}), latency=0.3)
    with RelayThread(relay) as running:
        runs = _runs(tmp_path, running.url, redis_server.url if shared else None)
        summaries = _run_together(runs)
        assert sum(summary.saved for summary in summaries.values()) == 16
        assert len(running.requests) == 16
        assert running.max_in_flight == 3 if shared else running.max_in_flight > 3


def test_a_limiter_cannot_travel_in_client_options(tmp_path):
    """A limiter object in client_options is refused: redis_url is how shards share one."""
    with pytest.raises(ConfigurationError, match="redis_url"):
        run_sharded(
            str(tmp_path / "jobs.jsonl"), tmp_path, shards=2, client_options={"limiter": object()}
        )
