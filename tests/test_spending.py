"""A batch's cap (`max_cost`, `_spending`, `_ledger`): no request starts that could take the
folder's total past it, with 64 in flight, across runs and across a kill -9; against the fake
relay over real sockets on 127.0.0.1.

The fake relay bills nothing itself: a request it answered is what a relay bills at the
estimate ($0.134 per standard image), so `generation_count * 0.134 <= cap` is the cap holding.
"""

import json
import signal
import subprocess
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from gemimg_async import (
    BatchRun,
    Client,
    ConfigurationError,
    Cost,
    ImageRequest,
    Prices,
    RetryPolicy,
    run_batch,
)
from gemimg_async._ledger import Ledger, charged
from gemimg_async._manifest import ManifestEntry
from gemimg_async.testing import FakeClock, FakeRelay, Fault
from helpers import API_KEY, TIER_4K, latest, manifest_lines, wait_for
from hostile.support import child_env, command

pytestmark = pytest.mark.anyio

PRICE = Decimal("0.134")
"""Google's list price of a standard (1K) image: the estimate of every job here."""


def jobs(count: int, prefix: str = "job") -> list[ImageRequest]:
    return [ImageRequest(f"{prefix} number {i}", id=f"{prefix}{i:03d}") for i in range(count)]


def charges(out: Path) -> Decimal:
    """What the manifest's lines charge, read from the file (every line, not only the latest)."""
    ledger = Ledger()
    for doc in manifest_lines(out):
        ledger.add(ManifestEntry.from_json(doc))
    return ledger.total.total


# --- the cap under concurrency -----------------------------------------------------------------


async def test_the_cap_holds_with_64_in_flight(tmp_path):
    """With 64 requests in flight and a cap of 100 images, exactly 100 are sent (each counted
    as spent from the moment it is taken), the pool is full while they run, and the batch stops
    cleanly, saying why."""
    cap = 100 * PRICE
    async with (
        FakeRelay(api_keys=API_KEY, latency=0.3) as relay,
        Client(API_KEY, relay.url, max_concurrency=64, clock=FakeClock()) as client,
    ):
        summary = await run_batch(client, jobs(300), tmp_path / "out", max_cost=cap)
    assert relay.generation_count == 100
    assert relay.max_in_flight == 64
    assert summary.capped
    assert "cap" in (summary.halted or "")
    assert not summary.interrupted
    assert not summary.ok
    assert (summary.saved, summary.sent) == (100, 100)
    assert summary.cost.total == charges(tmp_path / "out") == cap
    assert summary.cost.reported is None


async def test_outcome_unknown_counts_as_billed_and_failures_do_not(tmp_path):
    """A truncated answer (outcome_unknown) is charged at its estimate, a 400 at nothing: with a
    cap of 5 images, 3 failures and 1 lost answer, 8 requests go out and the cap still holds."""
    relay_faults = [Fault.status(400)] * 3 + [Fault.truncate()]
    async with (
        FakeRelay(api_keys=API_KEY) as relay,
        Client(
            API_KEY, relay.url, max_concurrency=1, retry=RetryPolicy.never(), clock=FakeClock()
        ) as client,
    ):
        relay.script(*relay_faults)
        summary = await run_batch(client, jobs(20), tmp_path / "out", max_cost=5 * PRICE)
    assert relay.generation_count == 8
    assert (summary.failed, summary.outcome_unknown, summary.saved) == (3, 1, 4)
    assert summary.cost.total == 5 * PRICE
    assert summary.possibly_billed == PRICE
    assert summary.capped


async def test_a_relay_that_reports_less_lets_more_jobs_fit(tmp_path):
    """Where the relay says what each call cost (LiteLLM's header), that figure is charged, not
    the estimate; the estimate is still what a job reserves while in flight."""
    async with (
        FakeRelay(api_keys=API_KEY, response_cost=0.1, latency=0.05) as relay,
        Client(API_KEY, relay.url, max_concurrency=8, clock=FakeClock()) as client,
    ):
        summary = await run_batch(client, jobs(40), tmp_path / "out", max_cost=Decimal("2.0"))
    assert relay.generation_count > 2 / PRICE  # more than 14 fit at the reported $0.10
    assert summary.cost.total <= Decimal("2.0")
    assert summary.cost.total == Decimal("0.1") * relay.generation_count
    assert summary.cost.reported == summary.cost.total
    assert summary.cost.estimated == PRICE * relay.generation_count
    assert summary.capped


async def test_a_cap_of_nothing_sends_nothing(relay, client, tmp_path):
    """max_cost=0: the first job does not fit; nothing is sent and the summary says so."""
    summary = await run_batch(client, jobs(3), tmp_path / "out", max_cost=0)
    assert relay.generation_count == 0
    assert summary.capped
    assert summary.halted is not None
    assert "$0.0000 cap" in summary.halted


# --- across runs: the manifest is the ledger ---------------------------------------------------


async def test_a_higher_cap_resumes_and_nothing_is_sent_twice(relay, client, tmp_path):
    """A run capped at 3 images stops after 3; the same cap again sends nothing; a cap of 7
    sends 4 more, none of them again."""
    out = tmp_path / "out"
    first = await run_batch(client, jobs(10), out, max_cost=3 * PRICE)
    assert (first.saved, relay.generation_count) == (3, 3)
    again = await run_batch(client, jobs(10), out, max_cost=3 * PRICE)
    assert again.capped
    assert relay.generation_count == 3
    more = await run_batch(client, jobs(10), out, max_cost=7 * PRICE)
    assert (more.saved, more.skipped, relay.generation_count) == (7, 3, 7)
    assert more.run_cost.total == 4 * PRICE
    assert more.cost.total == charges(out) == 7 * PRICE
    prompts = [request.prompt for request in relay.requests]
    assert len(prompts) == len(set(prompts))
    final = await run_batch(client, jobs(10), out, max_cost=10 * PRICE)
    assert final.ok
    assert final.cost.total == 10 * PRICE


async def test_every_sending_of_a_job_is_charged(tmp_path):
    """A job lost (outcome_unknown), then sent again with retry_unknown, has two lines: both
    count against the cap (the relay may have billed both)."""
    out = tmp_path / "out"
    async with (
        FakeRelay(api_keys=API_KEY) as relay,
        Client(API_KEY, relay.url, retry=RetryPolicy.never(), clock=FakeClock()) as client,
    ):
        relay.script(Fault.truncate())
        await run_batch(client, jobs(1), out)
        summary = await run_batch(client, jobs(1), out, retry_unknown=True, max_cost=PRICE)
        assert relay.generation_count == 1  # the second sending would pass the cap
        assert summary.capped
        summary = await run_batch(client, jobs(1), out, retry_unknown=True, max_cost=2 * PRICE)
    assert relay.generation_count == 2
    assert summary.ok
    assert summary.cost.total == 2 * PRICE
    assert summary.possibly_billed == PRICE


async def test_jobs_a_dead_run_left_in_flight_count_at_their_estimate(relay, client, tmp_path):
    """A send-log line with no manifest line (a run killed while it was in flight) is recorded
    outcome_unknown at its estimate before the cap is reckoned: here it leaves room for one."""
    out = tmp_path / "out"
    out.mkdir()
    ghost = {
        "id": "ghost",
        "key": "k-ghost",
        "at": 0,
        "n": 1,
        "model": TIER_4K,
        "prompt": "a job of a killed run",
        "cost": Cost.of(Decimal("0.24")).to_json(),
    }
    (out / ".manifest-sent.jsonl").write_text(json.dumps(ghost) + "\n")
    summary = await run_batch(client, jobs(5), out, max_cost=Decimal("0.24") + PRICE)
    assert relay.generation_count == 1
    assert latest(out)["ghost"]["status"] == "outcome_unknown"
    assert latest(out)["ghost"]["cost"]["estimated"] == 0.24
    assert summary.possibly_billed == Decimal("0.24")
    assert summary.cost_by_tier["4K"].total == Decimal("0.24")
    assert summary.cost_by_tier["1K"].total == PRICE


async def test_a_cap_of_another_currency_than_the_manifest_is_refused(relay, tmp_path):
    """Prices in EUR against a manifest that counted USD: ConfigurationError, nothing sent."""
    out = tmp_path / "out"
    async with Client(API_KEY, relay.url, clock=FakeClock()) as client:
        await run_batch(client, jobs(1), out)
    euros = Prices.from_json({"currency": "EUR"})
    async with Client(API_KEY, relay.url, clock=FakeClock(), prices=euros) as client:
        with pytest.raises(ConfigurationError, match="USD"):
            await run_batch(client, jobs(2), out, max_cost=10)
    assert relay.generation_count == 1


@pytest.mark.parametrize("cap", [-1, "a lot", float("nan"), float("inf"), True])
def test_a_cap_that_is_no_amount_is_refused_at_once(cap, tmp_path):
    """max_cost must be a finite amount of at least 0: ConfigurationError before any file."""
    client = Client(API_KEY, "http://127.0.0.1:9")
    with pytest.raises(ConfigurationError, match="max_cost"):
        BatchRun(client, tmp_path / "out", max_cost=cap)
    assert not (tmp_path / "out").exists()


# --- the ledger --------------------------------------------------------------------------------


def test_a_line_charges_its_cost_when_billed_and_only_a_reported_figure_otherwise():
    """Saved and outcome_unknown lines charge their cost; refused and failed ones only what the
    relay reported (a refusal may be billed)."""
    cost = Cost.of(PRICE)
    assert charged("saved", cost) == cost
    assert charged("outcome_unknown", cost) == cost
    assert charged("failed", cost).total == 0
    assert charged("refused", Cost.of(PRICE, Decimal("0.02"))).total == Decimal("0.02")


def test_the_ledger_adds_every_line_by_tier_and_leaves_out_another_currency(caplog):
    """Every line counts, per tier; a line in another currency is left out, with a warning."""
    ledger = Ledger()
    entry = ManifestEntry(id="a", status="saved", model=TIER_4K, cost=Cost.of(Decimal("0.24")))
    ledger.add(entry)
    ledger.add(entry)  # sent twice: two lines
    ledger.add(ManifestEntry(id="b", status="failed", cost=Cost.of(PRICE)))
    ledger.add(ManifestEntry(id="c", status="saved", cost=Cost.of(PRICE, currency="EUR")))
    ledger.add(ManifestEntry(id="d", status="saved"))  # before costs were kept
    assert ledger.total.total == Decimal("0.48")
    assert dict(ledger.by_tier()) == {"4K": Cost.of(Decimal("0.48")), "other": Cost()}
    assert "EUR" in caplog.text


# --- across a kill -9 --------------------------------------------------------------------------


async def test_the_cap_holds_across_a_kill_9_and_a_resume(relay, tmp_path):
    """A real `gemimg-async batch --max-cost` killed with -9 mid-run, then run again with the
    same cap: the relay never answers more than the cap allows (jobs in flight at the kill count
    as outcome_unknown); a higher cap then finishes the batch."""
    relay.latency = 0.2
    try:
        (tmp_path / "jobs.txt").write_text("".join(f"prompt number {i}\n" for i in range(60)))
        cap = 20 * PRICE
        args = ["batch", "jobs.txt", "--out", "out", "--base-url", relay.url]
        args += ["--concurrency", "8", "--max-cost", str(cap)]
        process = await anyio.open_process(
            command(*args),
            cwd=tmp_path,
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        async with process:
            manifest = tmp_path / "out" / "manifest.jsonl"
            await wait_for(lambda: manifest.exists() and manifest.read_bytes().count(b"\n") >= 5)
            process.kill()
            await process.wait()
        assert process.returncode == -signal.SIGKILL
        killed_at = relay.generation_count
        assert killed_at <= 20
        with anyio.fail_after(60):
            resumed = await anyio.run_process(
                command(*args), cwd=tmp_path, env=child_env(), check=False
            )
        assert resumed.returncode == 1, resumed.stderr.decode()
        assert "higher --max-cost" in resumed.stderr.decode()
        # every request the relay saw is charged (a job logged sent may not have arrived)
        assert PRICE * relay.generation_count <= charges(tmp_path / "out") <= cap

        args[-1] = str(70 * PRICE)
        args.append("--retry-unknown")
        with anyio.fail_after(60):
            final = await anyio.run_process(
                command(*args), cwd=tmp_path, env=child_env(), check=False
            )
        assert final.returncode == 0, final.stderr.decode()
        assert {line["status"] for line in latest(tmp_path / "out").values()} == {"saved"}
        assert PRICE * relay.generation_count <= charges(tmp_path / "out") <= 70 * PRICE
    finally:
        relay.latency = 0.0
