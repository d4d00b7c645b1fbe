"""What a batch reports: `BatchStats` while it runs, `BatchSummary` when it ends."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import attrs

from ._jobs import BadLine
from ._ledger import Ledger
from ._manifest import STATUSES, ManifestEntry, Status
from ._prices import Cost
from ._results import Outcome

__all__ = ["BatchStats", "BatchSummary", "Tally"]


@attrs.frozen
class BatchStats:
    """A batch as it runs, for progress displays."""

    total: int | None
    """About how many jobs the job file holds; None when unknown."""
    saved: int
    """Jobs saved by this run."""
    failed: int
    """Jobs of this run that ended without images: refused, failed or outcome_unknown."""
    skipped: int
    """Jobs not sent: done by an earlier run."""
    bad_lines: int
    in_flight: int
    images: int
    """Images saved by this run."""
    elapsed: float
    limit: int
    """The client's in-flight limit now (lower while the relay throttles)."""
    stopping: bool = False
    down: tuple[str, ...] = ()
    """The endpoints taken out now (`--endpoints`): cooling down, or being probed."""

    @property
    def done(self) -> int:
        """Jobs read and settled: saved, failed, skipped or bad."""
        return self.saved + self.failed + self.skipped + self.bad_lines

    @property
    def images_per_minute(self) -> float:
        return self.images * 60.0 / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until every job is done, at this run's pace so far; None when unknown or
        stopping."""
        finished = self.saved + self.failed
        if self.total is None or finished == 0 or self.elapsed <= 0 or self.stopping:
            return None
        return max(self.total - self.done, 0) * self.elapsed / finished


@attrs.frozen(kw_only=True)
class BatchSummary:
    """How a batch ended: the final state of every job met, this run or before."""

    saved: int
    refused: int
    failed: int
    outcome_unknown: int
    skipped: int
    """Of those, jobs not sent by this run (done before, or outcome_unknown kept as it is)."""
    sent: int
    images: int
    """Images saved by this run."""
    bad_lines: tuple[BadLine, ...]
    elapsed: float
    manifest: Path
    interrupted: bool
    """Stopped or aborted before every job was read: run again to go on."""
    halted: str | None = None
    """Why the batch stopped taking jobs on its own (the relay rejected the key, the disk is
    full, the next job would pass `max_cost`)."""
    capped: bool = False
    """`max_cost` stopped it (`halted` says how): run again with a higher cap to go on."""
    smaller: int = 0
    """Images of this run that came back at a lower tier than asked (4K asked, 1K made)."""
    other_shape: int = 0
    """Images of this run that came back in another aspect ratio than asked."""
    changed: int = 0
    """Jobs done before whose prompt or options changed since, left as they were: run with
    `redo_changed` (`--redo-changed`) to generate them anew (each billed again)."""
    cost: Cost = attrs.Factory(Cost)
    """What the folder's batch has cost, this run and every run before (every manifest line's
    charge: a saved or outcome_unknown job's cost, a refused or failed one's reported figure):
    `estimated`, `reported` where relays said, and `total`, which prefers their figures."""
    cost_by_tier: Mapping[str, Cost] = attrs.field(factory=dict)
    """`cost` per tier (`1K`, `2K`, `4K`; `other` for models of unknown tier)."""
    run_cost: Cost = attrs.Factory(Cost)
    """What this run cost (of `cost`)."""
    possibly_billed: Decimal = Decimal(0)
    """Of `cost.total`: jobs that ended outcome_unknown, perhaps billed without an image."""

    @property
    def counts(self) -> dict[Status, int]:
        return {status: getattr(self, status) for status in STATUSES}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        """Every job saved as it is asked now, no bad line, nothing left."""
        return (
            self.saved == self.total
            and not self.bad_lines
            and not self.interrupted
            and self.halted is None
            and not self.changed
        )


def _no_jobs() -> dict[Status, int]:
    return dict.fromkeys(STATUSES, 0)


@attrs.define
class Tally:
    """What a running batch has counted: how each job met ended, and of those it sent."""

    counts: dict[Status, int] = attrs.Factory(_no_jobs)
    """The final state of every job met."""
    ran: dict[Status, int] = attrs.Factory(_no_jobs)
    """... of the jobs this run sent."""
    skipped: int = 0
    changed: int = 0
    images: int = 0
    smaller: int = 0
    other_shape: int = 0
    ledger: Ledger = attrs.Factory(Ledger)
    """The charges of the lines this run wrote."""

    def skip(self, entry: ManifestEntry, *, changed: bool = False) -> None:
        """A job not sent: done before, held back, or changed since it was saved."""
        self.skipped += 1
        self.changed += changed
        self.counts[entry.status] += 1

    def ended(self, entry: ManifestEntry, outcome: Outcome | None = None) -> None:
        """A job this run sent ended as `entry` (`outcome` says what came back)."""
        self.counts[entry.status] += 1
        self.ran[entry.status] += 1
        self.images += len(entry.paths)
        self.ledger.add(entry)
        for delivered in outcome.result.delivered if outcome and outcome.result else ():
            if delivered is not None:
                self.smaller += delivered.smaller
                self.other_shape += delivered.other_shape

    def summary(
        self,
        *,
        bad_lines: tuple[BadLine, ...],
        elapsed: float,
        manifest: Path,
        interrupted: bool,
        halted: str | None,
        capped: bool,
        ledger: Ledger,
    ) -> BatchSummary:
        """The summary of a batch that counted this, its manifest's lines in `ledger`."""
        return BatchSummary(
            saved=self.counts["saved"],
            refused=self.counts["refused"],
            failed=self.counts["failed"],
            outcome_unknown=self.counts["outcome_unknown"],
            skipped=self.skipped,
            sent=sum(self.ran.values()),
            images=self.images,
            bad_lines=bad_lines,
            elapsed=elapsed,
            manifest=manifest,
            interrupted=interrupted,
            halted=halted,
            capped=capped,
            smaller=self.smaller,
            other_shape=self.other_shape,
            changed=self.changed,
            cost=ledger.total,
            cost_by_tier=ledger.by_tier(),
            run_cost=self.ledger.total,
            possibly_billed=ledger.possibly_billed,
        )
