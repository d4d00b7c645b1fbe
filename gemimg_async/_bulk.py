"""Bulk jobs: a job file in, images and a manifest out, resumable after any stop.

Data flows one way::

    jobs file --read_jobs--> ImageRequest (with an id) --BatchRun--> Client.map
        --> OUT/{id}_{i}.{ext} (fsynced, then renamed into place; or uploaded: `_batchout`)
        --> one line of OUT/manifest.jsonl (written once the images are in place)

`_jobs` reads job files; `_resume` decides what each job needs; `_flights` follows the jobs in
`Client.map` (sent once their first attempt goes out); `_spending` reserves each one's estimate
against `max_cost`; `_journal` keeps the manifest and the send log; this module runs them.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path

import anyio
import attrs

from ._batchout import BatchJournal, BatchOutput, batch_output, out_location
from ._client import Client
from ._clock import Clock
from ._exceptions import AuthenticationError
from ._flights import Flights
from ._jobs import BadLine, JobDefaults, iterable_jobs, text_jobs
from ._jobtext import JobText
from ._manifest import ManifestEntry
from ._models import ImageRequest
from ._outdir import FolderImages
from ._progress import Progress
from ._results import SaveError
from ._resume import Step, plan
from ._shards import WHOLE, Shard, to_shard
from ._spending import Spending
from ._summary import BatchStats, BatchSummary, Tally
from ._tasks import background

__all__ = ["BatchRun", "run_batch"]

log = logging.getLogger("gemimg_async")

_TICK = 0.5
_SKIP_SLICE = 256
_UNAUTHORIZED = 401
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})

_ABANDONED = "abandoned after it was sent, when the batch was aborted; it may have been billed"
_STOPPED = "sent just as the batch stopped, then cancelled; it may have been billed"
_DANGLING = (
    "in flight when an earlier run ended without recording it (killed?); it may have been billed"
)


def _disk_error(error: BaseException | None) -> BaseException | None:
    """The disk error behind `error`: itself, or what a SaveError (an image paid for that could
    not be written) was raised from."""
    return error.__cause__ if isinstance(error, SaveError) else error


@attrs.define
class BatchRun:
    """One batch: jobs in, images and `OUT/manifest.jsonl` out. Use once: `await run.run(jobs)`.

    `stop()` takes no new job and lets the requests already sent finish (they are paid for);
    jobs taken but still waiting for their turn (`rpm`) are not sent. `abort()` cancels the
    requests sent too and records each as `outcome_unknown`, with the attempts made and the
    request ids the relay gave. Both are safe to call from a signal handler on the event loop.
    """

    client: Client
    out_dir: Path | str = attrs.field(converter=out_location)
    """A folder, or object storage: `s3://bucket/prefix` (any fsspec URL; `_batchout`)."""
    defaults: JobDefaults = JobDefaults()
    retry_unknown: bool = False
    """Send again jobs recorded `outcome_unknown`: they may have been billed already."""
    progress: Progress | None = None
    redo_changed: bool = False
    """Send again jobs saved (or outcome_unknown) whose prompt or options changed since: each is
    billed again. Without it they are skipped and counted in `BatchSummary.changed`."""
    encoding: str | None = None
    """A job file's encoding when it has no byte-order mark (default UTF-8)."""
    max_cost: Decimal | float | str | None = None
    """No job starts that could take what the folder's batch has spent (every run, by its
    manifest), with the jobs in flight, past this amount in the prices' currency."""
    shard: Shard = attrs.field(default=WHOLE, converter=to_shard)
    """Run only this shard's jobs (a `Shard`, or `"2/4"`), with its own manifest
    (`manifest.K-of-N.jsonl`)."""
    _clock: Clock = attrs.field(init=False)
    """The client's: every time the batch records or shows is read from it."""
    _stopping: bool = attrs.field(init=False, default=False)
    _abort_reason: str | None = attrs.field(init=False, default=None)
    _scope: anyio.CancelScope = attrs.field(init=False, factory=anyio.CancelScope)
    _flights: Flights | None = attrs.field(init=False, default=None)
    _tally: Tally = attrs.field(init=False, factory=Tally)
    _bad_lines: list[BadLine] = attrs.field(init=False, factory=list)
    _total: int | None = attrs.field(init=False, default=None)
    _began: float | None = attrs.field(init=False, default=None)
    _halted: str | None = attrs.field(init=False, default=None)
    _spending: Spending = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._clock = self.client.clock
        self._spending = Spending.of(self.client.prices, self.max_cost)  # a bad cap: raised now

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Take no new job; the requests already sent finish and are recorded; jobs taken but
        still waiting for their turn are let go unsent."""
        self._stopping = True
        if self._in_flight == 0:  # only jobs waiting for their turn, if any: let them go
            self._scope.cancel()

    @property
    def _in_flight(self) -> int:
        return 0 if self._flights is None else self._flights.sent

    def abort(self, reason: str = _ABANDONED) -> None:
        """Cancel what is in flight at once; each such job is recorded `outcome_unknown`."""
        self._stopping = True
        self._abort_reason = reason
        self._scope.cancel()

    @property
    def stats(self) -> BatchStats:
        return BatchStats(
            total=self._total,
            saved=self._tally.ran["saved"],
            failed=sum(self._tally.ran.values()) - self._tally.ran["saved"],
            skipped=self._tally.skipped,
            bad_lines=len(self._bad_lines),
            in_flight=self._in_flight,
            images=self._tally.images,
            elapsed=0.0 if self._began is None else self._clock.monotonic() - self._began,
            limit=self.client.stats.limit,
            stopping=self._stopping,
            down=tuple(e.name for e in self.client.stats.endpoints if e.down),
        )

    async def run(
        self, jobs: str | os.PathLike[str] | Iterable[ImageRequest] | JobText
    ) -> BatchSummary:
        """Run every job not done yet; returns the summary. ValidationError for a bad job file
        (`-`: stdin); ConfigurationError for an output folder that cannot be used."""
        if self._began is not None:
            raise RuntimeError("a BatchRun runs once")
        self._began = self._clock.monotonic()
        if isinstance(jobs, (str, os.PathLike, JobText)):
            text = jobs if isinstance(jobs, JobText) else JobText.open(jobs, encoding=self.encoding)
            requests = text_jobs(text, self.defaults, self._bad_line)
            self._total = text.total
        else:
            requests = iterable_jobs(jobs, self._bad_line)
            self._total = len(jobs) if isinstance(jobs, (list, tuple)) else None
        if not self.shard.is_whole:  # about its share: the ids' hash spreads them evenly
            requests = self.shard.select(requests, lambda job: job[0].id or "")
            self._total = None if self._total is None else round(self._total / self.shard.n)
        summary: BatchSummary | None = None
        try:
            async with batch_output(self.out_dir, self.shard, self._halt) as output:
                journal = output.journal
                self._flights = Flights(journal, self._clock)
                if self.progress is not None:
                    self.progress.start(self.stats)
                images = await output.images(sweep=True)
                await self._settle_dangling(journal, images)
                self._spending.resume(journal.ledger)
                async with background(self._tick() if self.progress is not None else None):
                    await self._send_all(output, self._to_send(requests, journal, images))
                journal.forget_sent()  # every job sent has its line now, synced
                summary = self._summary(journal)
        finally:
            if self.progress is not None and self._flights is not None:  # started
                self.progress.update(self.stats)
                self.progress.finish(summary)
        return summary

    def _bad_line(self, bad: BadLine) -> None:
        self._bad_lines.append(bad)
        log.warning("%s:%d: skipped: %s", bad.source, bad.line, bad.reason)

    async def _tick(self) -> None:
        assert self.progress is not None
        while True:
            await anyio.sleep(_TICK)  # a display's refresh, in real time whatever the clock
            self.progress.update(self.stats)

    async def _settle_dangling(self, journal: BatchJournal, images: FolderImages) -> None:
        """Record the jobs a dead run sent without recording them (at their estimates)."""
        journal.settle(images, reason=_DANGLING, now=self._clock.time())
        await journal.sync()
        journal.forget_sent()

    async def _to_send(
        self,
        requests: Iterator[tuple[ImageRequest, str]],
        journal: BatchJournal,
        images: FolderImages,
    ) -> AsyncIterator[ImageRequest]:
        """The jobs to send, each taken as `Client.map` pulls it (sent once its first attempt
        goes out).

        Reading a line and skipping a done job take microseconds; a resume skips thousands, so
        the loop is let go every `_SKIP_SLICE` of them.
        """
        assert self._flights is not None
        for number, (request, asked) in enumerate(requests, 1):
            if number % _SKIP_SLICE == 0:
                await anyio.lowlevel.checkpoint()
            if self._stopping:
                return
            assert request.id is not None
            step = plan(
                request,
                asked,
                journal.entries.get(request.id),
                images,
                now=self._clock.time(),
                retry_unknown=self.retry_unknown,
                redo_changed=self.redo_changed,
            )
            if step.step is Step.SEND:
                assert step.request is not None
                cost = self._spending.reserve(step.request)
                if cost is None:  # it would take the total past the cap: stop here
                    self._halt(self._spending.refused or "max_cost")
                    return
                self._flights.take(step.request, asked, cost)
                yield step.request
                continue
            assert step.entry is not None
            if step.step is Step.RECORD:
                journal.write(step.entry)
            self._tally.skip(step.entry, changed=step.step is Step.CHANGED)

    async def _send_all(self, output: BatchOutput, requests: AsyncIterator[ImageRequest]) -> None:
        assert self._flights is not None
        flights, journal = self._flights, output.journal
        outcomes = self.client.map(
            requests, save_to=output.save_to, overwrite=True, on_event=flights.hear
        )
        try:
            with self._scope:
                async for outcome in outcomes:
                    assert outcome.request.id is not None
                    flight = flights.end(outcome.request.id)
                    entry = ManifestEntry.from_outcome(
                        outcome, fingerprint=flight.fingerprint if flight else None
                    )
                    journal.write(entry)
                    self._tally.ended(entry, outcome)
                    self._spending.settle(flight.cost if flight else None, entry)
                    self._halt_on(outcome.error)
                    await journal.sync()
                    if self._stopping and self._in_flight == 0:
                        break  # what is left waits for its turn: not sent, let go
        finally:
            with anyio.CancelScope(shield=True):
                await outcomes.aclose()
                left = await output.images() if flights.sent else FolderImages.from_names(())
                self._abandon(journal, left)
                await journal.sync()

    def _halt_on(self, error: Exception | None) -> None:
        """Stop taking jobs when every one would fail: a rejected key (401; a 403 may be one
        model's), or a disk that takes no more (each job would be paid for, then lost)."""
        if isinstance(error, AuthenticationError) and error.status == _UNAUTHORIZED:
            self._halt(f"the relay rejected the API key: {error}")
        elif isinstance(disk := _disk_error(error), OSError) and disk.errno in _DISK_FULL:
            self._halt(f"the output folder takes no more: {error}")

    def _halt(self, reason: str) -> None:
        """Take no more jobs, for `reason`; what is in flight finishes, the rest is let go."""
        if self._halted is None:
            self._halted = reason
            log.error("%s; taking no more jobs", reason)
        self._stopping = True

    def _abandon(self, journal: BatchJournal, images: FolderImages) -> None:
        """Record the jobs cancelled after they were sent: perhaps billed."""
        assert self._flights is not None
        reason = self._abort_reason or _STOPPED
        now = self._clock.time()
        for entry, reserved in self._flights.abandon(images, reason=reason, now=now):
            journal.write(entry)
            self._tally.ended(entry)
            self._spending.settle(reserved, entry)

    def _summary(self, journal: BatchJournal) -> BatchSummary:
        assert self._began is not None
        return self._tally.summary(
            bad_lines=tuple(self._bad_lines),
            elapsed=self._clock.monotonic() - self._began,
            manifest=journal.manifest,
            interrupted=self._stopping and self._halted is None,
            halted=self._halted,
            capped=self._spending.refused is not None,
            ledger=journal.ledger,
        )


async def run_batch(
    client: Client,
    jobs: str | os.PathLike[str] | Iterable[ImageRequest],
    out_dir: str | os.PathLike[str],
    *,
    defaults: JobDefaults = JobDefaults(),
    retry_unknown: bool = False,
    redo_changed: bool = False,
    encoding: str | None = None,
    max_cost: Decimal | float | str | None = None,
    shard: Shard | str | None = None,
    progress: Progress | None = None,
    stop: anyio.Event | None = None,
    abort: anyio.Event | None = None,
) -> BatchSummary:
    """Generate every job of `jobs` (a job file, `-` for stdin, or requests) into `out_dir`,
    resuming what an earlier run left; see `BatchRun`. `shard` (a `Shard`, or `"2/4"`) runs
    only that shard's jobs, beside the other shards in `out_dir`. Setting `stop` or `abort`
    does what `BatchRun.stop()` and `BatchRun.abort()` do."""
    batch = BatchRun(
        client,
        out_dir,
        defaults=defaults,
        retry_unknown=retry_unknown,
        progress=progress,
        redo_changed=redo_changed,
        encoding=encoding,
        max_cost=max_cost,
        shard=shard,
    )

    async def on(event: anyio.Event | None, action: Callable[[], None]) -> None:
        if event is not None:
            await event.wait()
            action()

    async with background(on(stop, batch.stop), on(abort, batch.abort)):
        return await batch.run(jobs)
