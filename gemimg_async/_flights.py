"""The jobs a batch has handed to `Client.map` and not seen end: taken, then sent.

A job taken from the job file may still wait for its place in the pool and its rate slot: it is
not sent, costs nothing, and is not in the send log. The map's `RequestSent` event, heard just
before its first attempt's POST, makes it sent (one line in the send log); from then on it may be
billed, and if it never ends it is recorded `outcome_unknown`, with the attempts made and the
request ids the relay gave (`AnswerReceived`).
"""

from __future__ import annotations

import logging
from typing import Protocol

import attrs

from ._clock import Clock
from ._events import AnswerReceived, Event, RequestSent
from ._manifest import ManifestEntry
from ._models import ImageRequest
from ._outdir import FolderImages
from ._prices import Cost
from ._sentjob import SentJob

__all__ = ["Flight", "Flights"]

log = logging.getLogger("gemimg_async")


class SendLog(Protocol):
    """Where a job is noted sent (`Journal`, `StoreJournal`)."""

    def log_sent(self, sent: SentJob) -> SentJob: ...


@attrs.define
class Flight:
    """One job handed over: what it asks (`fingerprint`), and what was sent of it so far."""

    request: ImageRequest
    fingerprint: str
    cost: Cost | None = None
    """Its estimate, reserved against the batch's cap when it was taken."""
    sent: SentJob | None = None
    """Its send-log line, once its first attempt went out."""
    attempts: int = 0
    request_ids: list[str] = attrs.Factory(list)


@attrs.define
class Flights:
    """The batch's jobs in `Client.map`, by id; `hear` is the map's event listener."""

    journal: SendLog
    clock: Clock
    _flights: dict[str, Flight] = attrs.Factory(dict)

    @property
    def sent(self) -> int:
        """Jobs sent and not ended: in flight."""
        return sum(1 for flight in self._flights.values() if flight.sent is not None)

    def take(self, request: ImageRequest, fingerprint: str, cost: Cost | None = None) -> None:
        assert request.id is not None
        self._flights[request.id] = Flight(request, fingerprint, cost)

    def hear(self, event: Event) -> None:
        """Note an attempt going out (the first one logs the job sent) or answered."""
        job_id = event.request.id
        flight = self._flights.get(job_id) if job_id is not None else None
        if flight is None:
            return
        if isinstance(event, RequestSent):
            flight.attempts = event.attempt
            if flight.sent is None:
                flight.sent = SentJob.of(  # in flight even if its line cannot be written
                    flight.request,
                    started=self.clock.time(),
                    fingerprint=flight.fingerprint,
                    cost=flight.cost,
                )
                flight.sent = self.journal.log_sent(flight.sent)
        elif isinstance(event, AnswerReceived) and event.request_id:
            flight.request_ids.append(event.request_id)

    def end(self, job_id: str) -> Flight | None:
        """The job ended (its outcome came): it is in flight no more."""
        return self._flights.pop(job_id, None)

    def abandon(
        self, images: FolderImages, *, reason: str, now: float
    ) -> list[tuple[ManifestEntry, Cost | None]]:
        """The entries of the jobs cancelled after they were sent (saved, when their images are
        among `images`; otherwise outcome_unknown for `reason`), each with what it reserved.
        Jobs never sent are let go: the next run sends them."""
        flights, self._flights = self._flights, {}
        sent = {job_id: f.sent for job_id, f in flights.items() if f.sent is not None}
        entries = []
        for job_id, line in sent.items():
            flight = flights[job_id]
            names = images.complete(job_id, line.n)
            entry = line.unanswered(
                names,
                reason=reason,
                finished=now,
                attempts=max(flight.attempts, 1),
                request_ids=tuple(flight.request_ids),
            )
            entries.append((entry, flight.cost))
        return entries
