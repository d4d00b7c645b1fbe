"""A batch's money while it runs: each job's estimate, reserved against the cap (`max_cost`)
before it is handed over to be sent, and settled as its manifest line is written.

The manifest is the ledger (`_ledger`): a run resumes the budget from every line (the jobs a
killed run left in the send log are recorded `outcome_unknown` at their estimate first), so the
cap holds across runs. A job is reserved as `Client.map` pulls it, before its first attempt
goes out, so a request in flight always counts as spent; reserving and settling never wait, so
on one event loop no two jobs can both take the last of the cap, however many are in flight.
"""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation

import attrs

from ._budget import Budget
from ._exceptions import ConfigurationError
from ._ledger import Ledger
from ._manifest import ManifestEntry
from ._models import ImageRequest
from ._prices import Cost, Prices, estimate

__all__ = ["Spending", "max_cost_of"]

log = logging.getLogger("gemimg_async")


def max_cost_of(value: Decimal | float | str) -> Decimal:
    """A cap as a Decimal (floats by their shortest repr: 0.1 is 0.1); ConfigurationError for
    anything but a finite amount of at least 0."""
    try:
        cap = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        cap = Decimal("NaN")
    if isinstance(value, bool) or not cap.is_finite() or cap < 0:
        raise ConfigurationError(f"max_cost must be an amount of at least 0, not {value!r:.40}")
    return cap


@attrs.define
class Spending:
    """The estimates of a batch's jobs by `prices`, and its `budget` when it has a cap."""

    prices: Prices
    cap: Decimal | None = None
    budget: Budget | None = None
    """The cap's bookkeeping, once `resume` has read the ledger."""

    @classmethod
    def of(cls, prices: Prices, max_cost: Decimal | float | str | None) -> Spending:
        """A batch's spending; ConfigurationError when the cap is no amount."""
        return cls(prices, None if max_cost is None else max_cost_of(max_cost))

    def resume(self, ledger: Ledger) -> None:
        """Count what the manifest's lines (`ledger`) charged against the cap; a
        ConfigurationError when the manifest counts in another currency than the prices."""
        if self.cap is None:
            return
        if ledger.currency not in (None, self.prices.currency):
            raise ConfigurationError(
                f"the manifest records costs in {ledger.currency}, the prices are in "
                f"{self.prices.currency}: a cap counts in one currency (use prices in "
                f"{ledger.currency}, or another output folder)"
            )
        self.budget = Budget.resume(self.cap, ledger.by_status(), currency=self.prices.currency)
        log.info("cost cap %s: %s spent before this run", self.cap, self.budget.spent)

    @property
    def refused(self) -> str | None:
        """Why the cap stopped the batch; None while every job fit."""
        return None if self.budget is None else self.budget.refused

    def reserve(self, request: ImageRequest) -> Cost | None:
        """The estimate of `request`, reserved against the cap; None when it does not fit."""
        cost = estimate(request, self.prices)
        if self.budget is not None and not self.budget.reserve(cost):
            return None
        return cost

    def settle(self, reserved: Cost | None, entry: ManifestEntry) -> None:
        """A job's line is written: what it reserved is spent as its line says."""
        if self.budget is not None:
            reserved = reserved or Cost(currency=self.prices.currency)
            self.budget.settle(reserved, entry.status, entry.cost)
