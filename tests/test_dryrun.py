"""`batch --dry-run` (`_dryrun`): every job checked and quoted, reading only."""

from decimal import Decimal

import pytest

from gemimg_async import Client, JobDefaults, Prices, run_batch
from gemimg_async._dryrun import dry_run
from gemimg_async._jobtext import JobText
from gemimg_async._shards import Shard
from gemimg_async.testing import FakeClock
from helpers import API_KEY, write_jobs

pytestmark = pytest.mark.anyio


def snapshot(folder):
    """Every file of `folder` with its size and modification time."""
    return {path.name: (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.iterdir()}


async def test_a_dry_run_reads_the_folder_and_writes_nothing(relay, tmp_path):
    """A dry run of a folder a batch wrote: no file made, changed or swept (a temporary file
    of another writer stays), and what was spent is read from every manifest line."""
    jobs = write_jobs(tmp_path, "jobs.txt", ["a fox", "a cat", "a dog"])
    out = tmp_path / "out"
    async with Client(API_KEY, relay.url, clock=FakeClock()) as client:
        await run_batch(client, jobs, out)
    (out / ".gemimg-0123.part").write_bytes(b"someone else's")
    before = snapshot(out)
    found = dry_run(JobText.open(jobs), out, max_cost=Decimal(1))
    assert snapshot(out) == before
    assert found.ok
    assert (found.quote.jobs, found.pending.jobs if found.pending else None) == (3, 0)
    assert found.spent is not None
    assert found.spent.total == Decimal("0.402")
    assert found.lines()[-1] == "cap $1.0000: $0.5980 left for about $0.0000: all of it fits"


def test_a_dry_run_uses_the_flags_defaults_and_the_price_table(tmp_path):
    """The quote follows the job file's defaults (--model) and the given prices."""
    jobs = write_jobs(tmp_path, "jobs.txt", ["a fox", "a cat"])
    found = dry_run(
        JobText.open(jobs),
        tmp_path / "out",
        defaults=JobDefaults(model="4k"),
        prices=Prices.from_json({"4K": 0.3}),
    )
    assert [(row.tier, row.jobs) for row in found.quote.rows] == [("4K", 2)]
    assert found.quote.cost.estimated == Decimal("0.6")
    assert found.pending is None
    assert not (tmp_path / "out").exists()


async def test_a_dry_run_of_a_shard_quotes_its_jobs_and_reads_every_split(relay, tmp_path):
    """--shard: the quote is of the shard's jobs; what a run without --shard would send counts
    the jobs the shards saved as done, as the run itself does."""
    jobs = write_jobs(tmp_path, "jobs.txt", [f"a harbour {i}" for i in range(12)])
    out = tmp_path / "out"
    one, two = Shard(1, 2), Shard(2, 2)
    async with Client(API_KEY, relay.url, clock=FakeClock()) as client:
        first = await run_batch(client, jobs, out, shard=one)
    found = dry_run(JobText.open(jobs), out, shard=two)
    assert found.pending is None  # shard 2/2 has no manifest, and the other split is its own
    assert found.quote.jobs == 12 - first.saved
    whole = dry_run(JobText.open(jobs), out)
    assert whole.pending is not None
    assert whole.pending.jobs == 12 - first.saved
    assert whole.spent is not None
    assert whole.spent.total == first.saved * Decimal("0.134")
