"""Budget: a cap that no request can push the total past, counting requests in flight as spent
and outcome_unknown as billed, rebuilt from the ledger on resume; Quote: a dry run's figures."""

import random
from decimal import Decimal

import anyio
import anyio.lowlevel
import pytest

from gemimg_async import Cost, ImageRequest, Prices, Quote
from gemimg_async._budget import Budget, charge_of
from gemimg_async.testing import png
from helpers import STANDARD, TIER_2K, TIER_4K

D = Decimal
ONE = Cost.of(D("0.134"))
FOUR_K = Cost.of(D("0.24"))


def test_requests_start_until_the_next_would_pass_the_cap():
    """Three 1K images fit a $0.402 cap exactly; the fourth is refused, and says why."""
    budget = Budget(D("0.402"))
    assert [budget.reserve(ONE) for _ in range(4)] == [True, True, True, False]
    assert budget.in_flight == D("0.402")
    assert budget.remaining == 0
    assert "past the $0.4020 cap" in budget.refused
    assert "$0.4020 in flight" in budget.refused
    assert "higher cap" in budget.refused


def test_settling_charges_what_the_job_cost_and_frees_the_rest():
    """A saved job charges its reported figure (cheaper than estimated): room for another."""
    budget = Budget(D("0.3"))
    assert budget.reserve(ONE)
    assert budget.reserve(ONE)
    assert not budget.reserve(ONE)
    budget.settle(ONE, "saved", ONE.with_reported(D("0.02")))
    assert (budget.spent, budget.in_flight) == (D("0.02"), D("0.134"))
    assert budget.reserve(ONE)


@pytest.mark.parametrize(
    ("status", "cost", "charge"),
    [
        ("saved", ONE, "0.134"),
        ("saved", ONE.with_reported(D("0.1")), "0.1"),
        ("outcome_unknown", ONE, "0.134"),
        ("failed", ONE, "0"),
        ("refused", ONE, "0"),
        ("refused", ONE.with_reported(D("0.003")), "0.003"),
        ("saved", None, "0"),
    ],
)
def test_what_a_finished_job_counts_against_the_cap(status, cost, charge):
    """Saved and outcome_unknown jobs count their cost; refused and failed jobs only a cost the
    relay reported."""
    assert charge_of(status, cost) == D(charge)


def test_outcome_unknown_is_counted_as_possibly_billed():
    """A job lost in flight counts as spent, and apart as possibly billed without an image."""
    budget = Budget(D(1))
    budget.reserve(FOUR_K)
    budget.settle(FOUR_K, "outcome_unknown", FOUR_K)
    assert (budget.spent, budget.possibly_billed, budget.in_flight) == (D("0.24"), D("0.24"), 0)
    assert not budget.reserve(Cost.of(D("0.77")))
    assert "$0.2400 of it possibly billed without an image" in budget.refused


def test_a_resumed_budget_counts_the_ledger():
    """The manifest's entries (status, cost) count against the cap of the next run."""
    ledger = [("saved", ONE), ("outcome_unknown", FOUR_K), ("failed", ONE), ("saved", None)]
    budget = Budget.resume("0.5", ledger)
    assert (budget.spent, budget.possibly_billed) == (D("0.374"), D("0.24"))
    assert budget.reserve(Cost.of(D("0.126")))
    assert not budget.reserve(Cost.of(D("0.000001")))
    assert Budget.resume("0.9", ledger).reserve(Cost.of(D("0.5")))


def test_a_cap_is_a_finite_amount():
    """A negative or infinite cap is a ValueError; a cap of 0 lets nothing start."""
    for cap in ("-1", "inf", "nan"):
        with pytest.raises(ValueError, match="cost cap"):
            Budget(D(cap))
    assert not Budget(D(0)).reserve(ONE)


@pytest.mark.anyio
async def test_the_cap_holds_with_64_requests_in_flight():
    """64 tasks reserve, wait, and settle (saved, lost or failed) in random order: what is spent
    and in flight never passes the cap."""
    rng = random.Random(7)  # noqa: S311 - a reproducible interleaving
    cap = D("5.00")
    budget = Budget(cap)
    peak = D(0)
    started = 0

    async def worker():
        nonlocal peak, started
        while True:
            cost = rng.choice([ONE, FOUR_K])
            if not budget.reserve(cost):
                return
            started += 1
            peak = max(peak, budget.committed)
            for _ in range(rng.randrange(5)):
                await anyio.lowlevel.checkpoint()
            status = rng.choice(["saved", "saved", "outcome_unknown", "failed"])
            budget.settle(cost, status, cost)

    async with anyio.create_task_group() as group:
        for _ in range(64):
            group.start_soon(worker)
    assert peak <= cap
    assert budget.spent <= cap
    assert budget.in_flight == 0
    assert started > 20


def test_a_quote_adds_up_jobs_images_and_cost_per_tier():
    """Rows in tier order, models of unknown tier last, and the totals of them."""
    requests = [
        ImageRequest("a", model=TIER_4K),
        ImageRequest("b", model=STANDARD, n=2, images=[png()]),
        ImageRequest("c", model=TIER_2K),
        ImageRequest("d", model="custom-model"),
        ImageRequest("e", model=TIER_4K, n=3),
    ]
    quote = Quote.of(requests)
    assert [(r.tier, r.jobs, r.images, r.input_images) for r in quote.rows] == [
        ("1K", 1, 2, 1),
        ("2K", 1, 1, 0),
        ("4K", 2, 4, 0),
        ("other", 1, 1, 0),
    ]
    assert quote.rows[0].cost.estimated == 2 * (D("0.134") + D("0.0011"))
    assert (quote.jobs, quote.images) == (5, 8)
    assert quote.cost.estimated == D("0.2702") + D("0.134") + D("0.96") + D("0.134")
    lines = quote.lines()
    assert lines[0].split() == ["tier", "jobs", "images", "inputs", "estimated"]
    assert lines[-1].split() == ["total", "5", "8", "1", "$1.4982"]


def test_a_quote_in_another_currency_says_so():
    """A relay's table in euros quotes in euros."""
    prices = Prices.from_json({"currency": "EUR", "1K": 0.1})
    quote = Quote.of([ImageRequest("a")], prices)
    assert quote.cost == Cost.of(D("0.1"), currency="EUR")
    assert quote.lines()[-1].endswith("0.1000 EUR")
    assert Quote.of([]).lines()[-1].split() == ["total", "0", "0", "0", "$0.0000"]
