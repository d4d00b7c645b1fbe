"""A send-log line (`_journal`): a job handed over to be sent, so possibly billed from then on."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from ._manifest import ManifestEntry, optional_str
from ._models import ImageRequest
from ._prices import Cost

__all__ = ["SentJob", "record_dangling", "unrecorded"]

log = logging.getLogger("gemimg_async")


@attrs.frozen(kw_only=True)
class SentJob:
    """A send-log line: a job handed over to be sent, so possibly billed from then on."""

    id: str
    key: str | None
    at: int
    """The manifest's size when it was sent: a line of this id past it records how it ended."""
    n: int = 1
    model: str | None = None
    size: str | None = None
    started: float = 0.0
    prompt: str | None = None
    fingerprint: str | None = None
    cost: Cost | None = None
    """Its estimate: what it counts against a cap if it never gets a line of its own."""

    @classmethod
    def of(
        cls,
        request: ImageRequest,
        *,
        started: float,
        fingerprint: str | None = None,
        cost: Cost | None = None,
    ) -> SentJob:
        """`request`'s line (its place in the manifest is filled in by `Journal.log_sent`)."""
        assert request.id is not None
        return cls(
            id=request.id,
            key=request.idempotency_key,
            at=0,
            n=request.n,
            model=request.model,
            size=request.size,
            started=started,
            prompt=request.prompt,
            fingerprint=fingerprint,
            cost=cost,
        )

    def unanswered(
        self,
        names: tuple[str, ...] | None,
        *,
        reason: str,
        finished: float,
        attempts: int = 1,
        request_ids: tuple[str, ...] = (),
    ) -> ManifestEntry:
        """This job's manifest entry when no answer was recorded: saved if its images are on
        disk (`names`), otherwise outcome_unknown for `reason` (it may have been billed).
        `attempts` and `request_ids` are what was sent and answered (at least one attempt)."""
        return ManifestEntry(
            id=self.id,
            status="saved" if names else "outcome_unknown",
            paths=names or (),
            error=None if names else reason,
            attempts=attempts,
            request_ids=request_ids,
            idempotency_keys=(self.key,) if self.key else (),
            model=self.model,
            size=self.size,
            started=self.started,
            finished=finished,
            prompt=self.prompt,
            fingerprint=self.fingerprint,
            cost=self.cost,
        )

    def to_line(self) -> bytes:
        doc = attrs.asdict(self, recurse=False)
        doc["started"] = round(self.started, 3)
        doc["cost"] = None if self.cost is None else self.cost.to_json()
        return json.dumps(doc, ensure_ascii=False).encode("utf-8", "replace") + b"\n"

    @classmethod
    def from_json(cls, doc: Any) -> SentJob:
        """A send-log line; ValueError (a torn line: its job was not handed over yet)."""
        if not isinstance(doc, dict):
            raise ValueError("a send-log line is an object")  # noqa: TRY004 - one bad-line path
        job_id, at, n = doc.get("id"), doc.get("at"), doc.get("n", 1)
        if not isinstance(job_id, str) or not isinstance(at, int) or not isinstance(n, int):
            raise ValueError("a send-log line needs an id, a manifest offset and n")  # noqa: TRY004
        return cls(
            id=job_id,
            key=optional_str(doc.get("key")),
            at=at,
            n=n,
            model=optional_str(doc.get("model")),
            size=optional_str(doc.get("size")),
            started=float(doc.get("started", 0.0)),
            prompt=optional_str(doc.get("prompt")),
            fingerprint=optional_str(doc.get("fingerprint")),
            cost=None if doc.get("cost") is None else Cost.from_json(doc["cost"]),
        )


def unrecorded(lines: Iterable[bytes], starts: Mapping[str, int]) -> list[SentJob]:
    """The jobs of send-log `lines` with no manifest line after them (`starts`: where each job's
    latest manifest line starts); a torn line's job was not sent yet, and is left out."""
    sent = []
    for line in lines:
        try:
            job = SentJob.from_json(json.loads(line))
        except ValueError:
            continue
        if starts.get(job.id, -1) < job.at:
            sent.append(job)
    return sent


def record_dangling(
    dangling: Sequence[SentJob],
    complete: Callable[[str, int], tuple[str, ...] | None],
    write: Callable[[ManifestEntry], object],
    *,
    reason: str,
    now: float,
    where: str,
) -> None:
    """Write a line for each job an earlier run sent and never recorded: saved when `complete`
    finds all its images, else outcome_unknown for `reason` (at its estimate, as a cap counts
    it); say so in a warning naming `where` the images were looked for."""
    unknown = 0
    for sent in dangling:
        entry = sent.unanswered(complete(sent.id, sent.n), reason=reason, finished=now)
        write(entry)
        unknown += entry.status == "outcome_unknown"
    if dangling:
        log.warning(
            "%d job(s) were in flight when an earlier run ended without recording them: %d have "
            "their images %s (saved), %d are outcome_unknown (may have been billed; sent again "
            "only with --retry-unknown)",
            len(dangling),
            len(dangling) - unknown,
            where,
            unknown,
        )
