"""Spending: what a batch will cost before it runs (`Quote`), and a cap that holds while it does
(`Budget`).

The budget is the ledger's arithmetic, with no I/O: a run rebuilds it from the manifest (every
job's recorded cost), then asks `reserve` before each request. A request starts only if what was
spent, what is in flight (counted as spent) and its own estimate all fit under the cap; a job that
ended `outcome_unknown` counts as billed. Reserving and settling never wait, so on one event loop
no two requests can both take the last of the cap.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import attrs

from ._manifest import Status
from ._models import ImageRequest
from ._prices import DEFAULT_PRICES, Cost, Prices, estimate, money
from ._sizes import TIERS, tier_of

__all__ = ["Budget", "Quote", "QuoteRow", "charge_of"]

_ZERO = Decimal(0)


def charge_of(status: Status, cost: Cost | None) -> Decimal:
    """What a finished job counts against a cap: its cost (the reported figure where there is
    one) when it was saved or may have been billed (`outcome_unknown`); for refused and failed
    jobs, only a cost the relay reported."""
    if cost is None:
        return _ZERO
    if status in ("saved", "outcome_unknown"):
        return cost.total
    return cost.reported or _ZERO


@attrs.define
class Budget:
    """A spending cap for one output folder, across runs: the manifest is the ledger."""

    cap: Decimal = attrs.field(converter=Decimal)
    currency: str = "USD"
    spent: Decimal = _ZERO
    """Charged by finished jobs, this run and earlier ones."""
    possibly_billed: Decimal = _ZERO
    """Of `spent`: jobs that ended `outcome_unknown`, billed perhaps, with no image."""
    in_flight: Decimal = _ZERO
    """Reserved by requests started and not yet finished."""
    refused: str | None = None
    """Why the last `reserve` said no; None while every request fit."""

    def __attrs_post_init__(self) -> None:
        if not self.cap.is_finite() or self.cap < 0:
            raise ValueError(f"a cost cap is a finite amount of at least 0, not {self.cap}")

    @classmethod
    def resume(
        cls,
        cap: Decimal | float | str,
        ledger: Iterable[tuple[Status, Cost | None]],
        *,
        currency: str = "USD",
    ) -> Budget:
        """A budget that counts what the jobs already in the manifest charged (each job's
        latest line: its status and cost)."""
        budget = cls(Decimal(str(cap)), currency)
        for status, cost in ledger:
            budget.record(status, cost)
        return budget

    @property
    def committed(self) -> Decimal:
        """Spent, and in flight: what the cap has to leave room for."""
        return self.spent + self.in_flight

    @property
    def remaining(self) -> Decimal:
        return max(self.cap - self.committed, _ZERO)

    def reserve(self, cost: Cost) -> bool:
        """Whether a request of this estimated cost may start; if so, it is in flight until
        `settle`. When it may not, `refused` says why."""
        if self.committed + cost.estimated > self.cap:
            self.refused = (
                f"the next request (about {self._show(cost.estimated)}) would take the total past "
                f"the {self._show(self.cap)} cap: {self._show(self.spent)} spent "
                f"({self._show(self.possibly_billed)} of it possibly billed without an image) "
                f"and {self._show(self.in_flight)} in flight; run again with a higher cap to go on"
            )
            return False
        self.in_flight += cost.estimated
        return True

    def settle(self, reserved: Cost, status: Status, cost: Cost | None) -> None:
        """A request reserved with `reserved` finished: it is no longer in flight, and charges
        what `charge_of` says of its `cost` (the estimate with the relay's figure, if any)."""
        self.in_flight = max(self.in_flight - reserved.estimated, _ZERO)
        self.record(status, cost)

    def record(self, status: Status, cost: Cost | None) -> None:
        """A finished job's charge, without a reservation (a line of the ledger)."""
        charge = charge_of(status, cost)
        self.spent += charge
        if status == "outcome_unknown":
            self.possibly_billed += charge

    def _show(self, amount: Decimal) -> str:
        return money(amount, self.currency)


@attrs.frozen
class QuoteRow:
    """One tier's share of a quote."""

    tier: str
    jobs: int
    images: int
    input_images: int
    cost: Cost = attrs.field(kw_only=True)


@attrs.frozen
class Quote:
    """What a batch will cost by the price table, per tier and in total (`--dry-run`)."""

    rows: tuple[QuoteRow, ...]
    currency: str = "USD"

    @classmethod
    def of(cls, requests: Iterable[ImageRequest], prices: Prices = DEFAULT_PRICES) -> Quote:
        """Every request estimated; the rows in tier order (models of unknown tier last)."""
        tally: dict[str, list[int]] = {}
        costs: dict[str, Cost] = {}
        for request in requests:
            tier = tier_of(request.model) or "other"
            counts = tally.setdefault(tier, [0, 0, 0])
            counts[0] += 1
            counts[1] += request.n
            counts[2] += len(request.images)
            costs[tier] = costs.get(tier, Cost(currency=prices.currency)) + estimate(
                request, prices
            )
        rows = tuple(
            QuoteRow(tier, tally[tier][0], tally[tier][1], tally[tier][2], cost=costs[tier])
            for tier in (*TIERS, "other")
            if tier in tally
        )
        return cls(rows, prices.currency)

    @property
    def jobs(self) -> int:
        return sum(row.jobs for row in self.rows)

    @property
    def images(self) -> int:
        return sum(row.images for row in self.rows)

    @property
    def cost(self) -> Cost:
        return sum((row.cost for row in self.rows), Cost(currency=self.currency))

    def lines(self) -> list[str]:
        """The quote as a small table, for the terminal."""
        head = f"{'tier':<6}{'jobs':>8}{'images':>8}{'inputs':>8}{'estimated':>14}"
        body = [
            f"{row.tier:<6}{row.jobs:>8}{row.images:>8}{row.input_images:>8}"
            f"{money(row.cost.estimated, self.currency):>14}"
            for row in self.rows
        ]
        inputs = sum(row.input_images for row in self.rows)
        total = (
            f"{'total':<6}{self.jobs:>8}{self.images:>8}{inputs:>8}"
            f"{money(self.cost.estimated, self.currency):>14}"
        )
        return [head, *body, total]
