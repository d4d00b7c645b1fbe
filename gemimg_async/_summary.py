"""What a batch reports: `BatchStats` while it runs, `BatchSummary` when it ends."""

from __future__ import annotations

from pathlib import Path

import attrs

from ._jobs import BadLine
from ._manifest import STATUSES, ManifestEntry, Status
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
    """Why the batch stopped taking jobs on its own (the relay rejected the key)."""
    smaller: int = 0
    """Images of this run that came back at a lower tier than asked (4K asked, 1K made)."""
    other_shape: int = 0
    """Images of this run that came back in another aspect ratio than asked."""
    changed: int = 0
    """Jobs done before whose prompt or options changed since, left as they were: run with
    `redo_changed` (`--redo-changed`) to generate them anew (each billed again)."""

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
        for delivered in outcome.result.delivered if outcome and outcome.result else ():
            if delivered is not None:
                self.smaller += delivered.smaller
                self.other_shape += delivered.other_shape
