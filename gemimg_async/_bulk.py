"""Bulk jobs: a job file in, images and a manifest out, resumable after any stop.

Data flows one way::

    jobs file --read_jobs--> ImageRequest (with an id) --BatchRun--> Client.map
        --> OUT/{id}_{i}.{ext} (fsynced, then renamed into place)
        --> one line of OUT/manifest.jsonl (written once the images are in place)

`_jobs` reads job files; `_manifest` keeps the manifest and the send log; this module runs them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import uuid
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
)
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs

from ._client import Client
from ._clock import Clock
from ._exceptions import AuthenticationError
from ._jobs import BadLine, JobDefaults, count_jobs, iterable_jobs, read_jobs
from ._journal import Journal, SentJob
from ._manifest import MANIFEST_NAME, STATUSES, ManifestEntry, Status
from ._models import ImageRequest
from ._outdir import FolderImages
from ._progress import Progress
from ._results import Outcome
from ._summary import BatchStats, BatchSummary

__all__ = ["BatchRun", "run_batch"]

log = logging.getLogger("gemimg_async")

_TICK = 0.5
_SKIP_SLICE = 256
_UNAUTHORIZED = 401
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
_ABANDONED = "abandoned after it was sent, when the batch was aborted; it may have been billed"
_DANGLING = (
    "in flight when an earlier run ended without recording it (killed?); it may have been billed"
)


def _no_jobs() -> dict[Status, int]:
    return dict.fromkeys(STATUSES, 0)


@attrs.define
class BatchRun:
    """One batch: jobs in, images and `OUT/manifest.jsonl` out. Use once: `await run.run(jobs)`.

    `stop()` takes no new job and lets the requests already sent finish (they are paid for);
    `abort()` cancels those too and records each as `outcome_unknown`. Both are safe to call from
    a signal handler on the event loop.
    """

    client: Client
    out_dir: Path = attrs.field(converter=Path)
    defaults: JobDefaults = JobDefaults()
    retry_unknown: bool = False
    """Send again jobs recorded `outcome_unknown`: they may have been billed already."""
    progress: Progress | None = None
    _clock: Clock = attrs.field(init=False)
    """The client's: every time the batch records or shows is read from it."""
    _stopping: bool = attrs.field(init=False, default=False)
    _abort_reason: str | None = attrs.field(init=False, default=None)
    _scope: anyio.CancelScope = attrs.field(init=False, factory=anyio.CancelScope)
    _in_flight: dict[str, SentJob] = attrs.field(init=False, factory=dict)
    _counts: dict[Status, int] = attrs.field(init=False, factory=_no_jobs)
    """The final state of every job met."""
    _ran: dict[Status, int] = attrs.field(init=False, factory=_no_jobs)
    """... of the jobs this run sent."""
    _skipped: int = attrs.field(init=False, default=0)
    _images: int = attrs.field(init=False, default=0)
    _bad_lines: list[BadLine] = attrs.field(init=False, factory=list)
    _total: int | None = attrs.field(init=False, default=None)
    _began: float | None = attrs.field(init=False, default=None)
    _halted: str | None = attrs.field(init=False, default=None)
    _smaller: int = attrs.field(init=False, default=0)
    _other_shape: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._clock = self.client.clock

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Take no new job; the requests already sent finish and are recorded."""
        self._stopping = True

    def abort(self, reason: str = _ABANDONED) -> None:
        """Cancel what is in flight at once; each such job is recorded `outcome_unknown`."""
        self._stopping = True
        self._abort_reason = reason
        self._scope.cancel()

    @property
    def stats(self) -> BatchStats:
        return BatchStats(
            total=self._total,
            saved=self._ran["saved"],
            failed=sum(self._ran.values()) - self._ran["saved"],
            skipped=self._skipped,
            bad_lines=len(self._bad_lines),
            in_flight=len(self._in_flight),
            images=self._images,
            elapsed=0.0 if self._began is None else self._clock.monotonic() - self._began,
            limit=self.client.stats.limit,
            stopping=self._stopping,
        )

    async def run(self, jobs: str | os.PathLike[str] | Iterable[ImageRequest]) -> BatchSummary:
        """Run every job not done yet; returns the summary. ValidationError for a bad job file."""
        if self._began is not None:
            raise RuntimeError("a BatchRun runs once")
        self._began = self._clock.monotonic()
        if isinstance(jobs, (str, os.PathLike)):
            requests = read_jobs(jobs, defaults=self.defaults, on_bad_line=self._bad_line)
            self._total = count_jobs(jobs)
        else:
            requests = iterable_jobs(jobs, self._bad_line)
            self._total = len(jobs) if isinstance(jobs, (list, tuple)) else None
        journal = Journal.open(self.out_dir)
        summary: BatchSummary | None = None
        try:
            if self.progress is not None:
                self.progress.start(self.stats)
            images = FolderImages.scan(self.out_dir)
            await self._settle_dangling(journal, images)
            async with _background(self._tick() if self.progress is not None else None):
                await self._send_all(journal, self._to_send(requests, journal, images))
            journal.forget_sent()  # every job sent has its line now, synced
            summary = self._summary(journal)
        finally:
            journal.close()
            if self.progress is not None:
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

    async def _settle_dangling(self, journal: Journal, images: FolderImages) -> None:
        """Record the jobs a dead run sent without recording them."""
        dangling = journal.dangling()
        for sent in dangling:
            names = images.complete(sent.id, sent.n)
            journal.write(sent.unanswered(names, reason=_DANGLING, finished=self._clock.time()))
        if dangling:
            unknown = sum(1 for sent in dangling if journal.entries[sent.id].status != "saved")
            log.warning(
                "%d job(s) were in flight when an earlier run ended without recording them: "
                "%d have their images on disk (saved), %d are outcome_unknown (may have been "
                "billed; sent again only with --retry-unknown)",
                len(dangling),
                len(dangling) - unknown,
                unknown,
            )
        await journal.sync()
        journal.forget_sent()

    async def _to_send(
        self, requests: Iterator[ImageRequest], journal: Journal, images: FolderImages
    ) -> AsyncIterator[ImageRequest]:
        """The jobs to send, marked sent as `Client.map` takes them (it sends each at once).

        Reading a line and skipping a done job take microseconds; a resume skips thousands, so
        the loop is let go every `_SKIP_SLICE` of them.
        """
        for number, request in enumerate(requests, 1):
            if number % _SKIP_SLICE == 0:
                await anyio.lowlevel.checkpoint()
            if self._stopping:
                return
            assert request.id is not None
            prior = journal.entries.get(request.id)
            if prior is not None and prior.status == "saved":
                if all(name in images.names for name in prior.paths):
                    self._skip(prior)
                    continue
                log.warning(
                    "%s: recorded saved, but its images are gone: sending it again", request.id
                )
            elif prior is None or prior.status == "outcome_unknown":
                names = images.complete(request.id, request.n)
                if names is not None:  # the images landed, the line did not: a crash between
                    entry = ManifestEntry(
                        id=request.id,
                        status="saved",
                        paths=names,
                        model=request.model,
                        size=request.size,
                        started=self._clock.time(),
                        finished=self._clock.time(),
                        prompt=request.prompt,
                    )
                    journal.write(entry)
                    self._skip(entry)
                    continue
                if prior is not None and not self.retry_unknown:
                    self._skip(prior)
                    continue
            # a resend of what may have been billed keeps its key: a relay that honours
            # Idempotency-Key then bills it once
            known = prior.idempotency_keys if prior and prior.status == "outcome_unknown" else ()
            keyed = attrs.evolve(request, idempotency_key=(known or _new_key())[-1])
            self._in_flight[request.id] = journal.mark_sent(keyed, self._clock.time())
            yield keyed

    def _skip(self, entry: ManifestEntry) -> None:
        self._skipped += 1
        self._counts[entry.status] += 1

    async def _send_all(self, journal: Journal, requests: AsyncIterator[ImageRequest]) -> None:
        outcomes = self.client.map(requests, save_to=self.out_dir, overwrite=True)
        try:
            with self._scope:
                async for outcome in outcomes:
                    entry = ManifestEntry.from_outcome(outcome)
                    journal.write(entry)
                    del self._in_flight[entry.id]
                    self._counts[entry.status] += 1
                    self._ran[entry.status] += 1
                    self._images += len(entry.paths)
                    self._judge(outcome)
                    self._halt_on(outcome.error)
                    await journal.sync()
        finally:
            with anyio.CancelScope(shield=True):
                await outcomes.aclose()
                self._abandon(journal)
                await journal.sync()

    def _judge(self, outcome: Outcome) -> None:
        """Count the images that came back smaller or another shape than asked."""
        for delivered in outcome.result.delivered if outcome.result else ():
            if delivered is not None:
                self._smaller += delivered.smaller
                self._other_shape += delivered.other_shape

    def _halt_on(self, error: Exception | None) -> None:
        """Stop taking jobs when every one would fail: a rejected key (401; a 403 may be one
        model's), or a disk that takes no more (each job would be paid for, then lost)."""
        if self._halted is not None:
            return
        if isinstance(error, AuthenticationError) and error.status == _UNAUTHORIZED:
            self._halted = f"the relay rejected the API key: {error}"
        elif isinstance(error, OSError) and error.errno in _DISK_FULL:
            self._halted = f"the output folder takes no more: {error}"
        else:
            return
        log.error("%s; taking no more jobs", self._halted)
        self.stop()

    def _abandon(self, journal: Journal) -> None:
        """Record the jobs cancelled in flight: sent, so perhaps billed."""
        if not self._in_flight:
            return
        images = FolderImages.scan(self.out_dir)
        now = self._clock.time()
        for job_id, sent in list(self._in_flight.items()):
            entry = sent.unanswered(
                images.complete(job_id, sent.n),
                reason=self._abort_reason or _ABANDONED,
                finished=now,
            )
            journal.write(entry)
            del self._in_flight[job_id]
            self._counts[entry.status] += 1
            self._ran[entry.status] += 1
            self._images += len(entry.paths)

    def _summary(self, journal: Journal) -> BatchSummary:
        assert self._began is not None
        return BatchSummary(
            saved=self._counts["saved"],
            refused=self._counts["refused"],
            failed=self._counts["failed"],
            outcome_unknown=self._counts["outcome_unknown"],
            skipped=self._skipped,
            sent=sum(self._ran.values()),
            images=self._images,
            bad_lines=tuple(self._bad_lines),
            elapsed=self._clock.monotonic() - self._began,
            manifest=journal.folder / MANIFEST_NAME,
            interrupted=self._stopping and self._halted is None,
            halted=self._halted,
            smaller=self._smaller,
            other_shape=self._other_shape,
        )


async def run_batch(
    client: Client,
    jobs: str | os.PathLike[str] | Iterable[ImageRequest],
    out_dir: str | os.PathLike[str],
    *,
    defaults: JobDefaults = JobDefaults(),
    retry_unknown: bool = False,
    progress: Progress | None = None,
    stop: anyio.Event | None = None,
    abort: anyio.Event | None = None,
) -> BatchSummary:
    """Generate every job of `jobs` (a job file, or requests) into `out_dir`, resuming what an
    earlier run left; see `BatchRun`. Setting `stop` or `abort` does what `BatchRun.stop()` and
    `BatchRun.abort()` do."""
    batch = BatchRun(
        client, out_dir, defaults=defaults, retry_unknown=retry_unknown, progress=progress
    )

    async def on(event: anyio.Event | None, action: Callable[[], None]) -> None:
        if event is not None:
            await event.wait()
            action()

    async with _background(on(stop, batch.stop), on(abort, batch.abort)):
        return await batch.run(jobs)


def _new_key() -> tuple[str]:
    return (str(uuid.uuid4()),)


@asynccontextmanager
async def _background(*coroutines: Coroutine[Any, Any, None] | None) -> AsyncIterator[None]:
    """Run `coroutines` beside the body, cancelled when it ends. Plain tasks rather than a task
    group, so that the body's own exceptions come out as they are, not in an ExceptionGroup."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines if coroutine is not None]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
