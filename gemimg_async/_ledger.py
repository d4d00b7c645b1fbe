"""What a batch folder has spent, by its manifest: every line's charge, by tier and status.

Each manifest line records how one sending of a job ended, and each sending may have been billed:
a job that failed and was sent again, or was `outcome_unknown` and sent again with
`--retry-unknown`, or changed and was made anew, has a line for each. So the ledger adds up every
line, not only each job's latest. A line charges what `charge_of` says: its cost (the reported
figure where there is one) when saved or `outcome_unknown`, only a reported figure when refused or
failed. The budget (`max_cost`) resumes from it, and the batch summary shows it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from decimal import Decimal

import attrs

from ._manifest import ManifestEntry, Status
from ._prices import Cost
from ._sizes import TIERS, tier_of

__all__ = ["Ledger", "charged"]

log = logging.getLogger("gemimg_async")

_ZERO = Decimal(0)
_OTHER = "other"
"""The tier of models whose tier is unknown."""


def charged(status: Status, cost: Cost) -> Cost:
    """What a line of `status` and `cost` charges: all of it when saved or `outcome_unknown`
    (perhaps billed); of a refused or failed one, only the figure the relay reported."""
    if status in ("saved", "outcome_unknown"):
        return cost
    if cost.reported is None:
        return Cost(currency=cost.currency)
    return Cost.of(_ZERO, cost.reported, cost.currency)


@attrs.define
class Ledger:
    """The charges of a manifest's lines, by (tier, status)."""

    currency: str | None = None
    """The currency of the first cost recorded; lines in another are left out (and said)."""
    charges: dict[tuple[str, Status], Cost] = attrs.Factory(dict)

    def add(self, entry: ManifestEntry) -> None:
        """Count one manifest line (one without a cost, written before costs were kept, charges
        nothing)."""
        cost = entry.cost
        if cost is None:
            return
        if self.currency is None:
            self.currency = cost.currency
        elif cost.currency != self.currency:
            log.warning(
                "%s: a cost in %s, in a manifest that counts in %s: left out of the totals",
                entry.id,
                cost.currency,
                self.currency,
            )
            return
        key = (tier_of(entry.model or "") or _OTHER, entry.status)
        self.charges[key] = self.charges.get(key, Cost(currency=cost.currency)) + charged(
            entry.status, cost
        )

    def by_status(self) -> Iterator[tuple[Status, Cost]]:
        """Each (tier, status)'s charges as (status, cost): a `Budget`'s ledger."""
        for (_, status), cost in self.charges.items():
            yield status, cost

    @property
    def total(self) -> Cost:
        """Every line's charge added up: estimated, reported and (preferring reported) total."""
        return sum(self.charges.values(), Cost(currency=self.currency or "USD"))

    @property
    def possibly_billed(self) -> Decimal:
        """Charged by lines that ended `outcome_unknown`: perhaps billed, without an image."""
        unknown = (
            cost for (_, status), cost in self.charges.items() if status == "outcome_unknown"
        )
        return sum((cost.total for cost in unknown), _ZERO)

    def by_tier(self) -> Mapping[str, Cost]:
        """The charges per tier, in tier order (models of unknown tier last)."""
        tiers: dict[str, Cost] = {}
        for (tier, _), cost in self.charges.items():
            tiers[tier] = tiers.get(tier, Cost(currency=cost.currency)) + cost
        return {tier: tiers[tier] for tier in (*TIERS, _OTHER) if tier in tiers}
