"""`gemimg-async batch --dry-run`: every job of a job file checked, and what the batch would cost,
with nothing sent and nothing written.

Each bad line is reported with its number, as a run would skip it; so is a job whose local input
image is missing, too big or no image (a run finds that only as it sends the job). The quote is
of every valid job by the price table; when the output folder holds a manifest already, it is
also of the jobs the next run would send (the others are done, or held back), beside what the
folder's batch has spent so far and, with a cap, what is left of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import attrs

from ._budget import Quote
from ._foreign import Foreign
from ._inputs import check_files
from ._jobs import BadLine, JobDefaults, text_jobs
from ._jobtext import JobText
from ._ledger import Ledger
from ._manifest import ManifestEntry, keep_latest, scan
from ._models import ImageRequest
from ._outdir import FolderImages
from ._prices import DEFAULT_PRICES, Cost, Prices, money
from ._resume import Step, plan
from ._shards import WHOLE, Shard

__all__ = ["DryRun", "dry_run"]


@attrs.frozen(kw_only=True)
class DryRun:
    """What a dry run found: the bad lines, the quote of every valid job, and, for a folder
    with a manifest, the quote of what the next run would send and what was spent."""

    source: str
    bad_lines: tuple[BadLine, ...]
    quote: Quote
    pending: Quote | None = None
    """The jobs the next run would send; None when the folder has no manifest yet."""
    spent: Cost | None = None
    """What the folder's manifest records as charged, every run's lines."""
    max_cost: Decimal | None = None

    @property
    def ok(self) -> bool:
        """Every job is valid."""
        return not self.bad_lines

    def lines(self) -> list[str]:
        """The report: bad lines first, then the quote (or quotes) and the cap."""
        lines = [str(bad) for bad in self.bad_lines]
        valid = _plural(self.quote.jobs, "valid job")
        bad = f", {_plural(len(self.bad_lines), 'bad line')}" if self.bad_lines else ""
        lines += [f"{self.source}: {valid}{bad}; nothing was sent", *self.quote.lines()]
        currency = self.quote.currency
        ahead = self.quote
        if self.pending is not None and self.spent is not None:
            ahead = self.pending
            so_far = f"the output folder's batch has cost {self.spent} so far"
            sends = f"the next run sends {_plural(self.pending.jobs, 'job')}"
            lines += [f"{so_far}; {sends} (the others are done or held back):"]
            lines += self.pending.lines()
        if self.max_cost is not None:
            left = max(self.max_cost - (self.spent.total if self.spent else Decimal(0)), Decimal(0))
            verdict = (
                "all of it fits"
                if ahead.cost.estimated <= left
                else "the run stops once the next job would not fit; a higher cap goes on"
            )
            lines.append(
                f"cap {money(self.max_cost, currency)}: {money(left, currency)} left for "
                f"about {money(ahead.cost.estimated, currency)}: {verdict}"
            )
        return lines


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def dry_run(
    jobs: JobText,
    out: Path,
    *,
    defaults: JobDefaults = JobDefaults(),
    prices: Prices = DEFAULT_PRICES,
    max_cost: Decimal | None = None,
    retry_unknown: bool = False,
    redo_changed: bool = False,
    shard: Shard = WHOLE,
) -> DryRun:
    """Check every job of `jobs` and quote them (`shard`'s only); read `out`'s manifest (the
    shard's, and those of other splits, as a run reads them), if any, to quote what a run into
    it would send. Reads only: nothing is sent, made or locked."""
    bad: list[BadLine] = []
    valid = shard.select(text_jobs(jobs, defaults, bad.append, check_files), _id)
    quote = Quote.of((request for request, _ in valid), prices)
    manifest = out / shard.manifest_name
    ledger = Ledger()
    foreign = Foreign.read(out, shard, ledger.add, lock=False)  # other splits' done jobs
    foreign.close()
    if not manifest.is_file() and not foreign.entries:
        return DryRun(source=jobs.source, bad_lines=tuple(bad), quote=quote, max_cost=max_cost)
    entries = dict(foreign.entries)
    if manifest.is_file():
        with manifest.open("rb") as file:
            keep_latest(entries, scan(file, manifest, ledger.add).entries)
    images = FolderImages.scan(out, sweep=False)
    flags = {"retry_unknown": retry_unknown, "redo_changed": redo_changed}
    again = shard.select(text_jobs(jobs, defaults, None, check_files), _id)  # memory stays flat
    pending = Quote.of(_to_send(again, entries, images, flags), prices)
    return DryRun(
        source=jobs.source,
        bad_lines=tuple(bad),
        quote=quote,
        pending=pending,
        spent=ledger.total,
        max_cost=max_cost,
    )


def _id(job: tuple[ImageRequest, str]) -> str:
    return job[0].id or ""


def _to_send(
    jobs: Iterator[tuple[ImageRequest, str]],
    entries: dict[str, ManifestEntry],
    images: FolderImages,
    flags: dict[str, bool],
) -> Iterator[ImageRequest]:
    now = time.time()
    for request, asked in jobs:
        assert request.id is not None
        step = plan(request, asked, entries.get(request.id), images, now=now, **flags)
        if step.step is Step.SEND:
            yield request
