"""The manifest of a batch folder: one JSON line per finished job, and the images beside it.

The manifest is append-only: one `os.write` of a whole line per finished job on an `O_APPEND`
descriptor, then an fsync. The latest line of an id is that job's state. A kill -9 leaves at worst
no line for the jobs it interrupted (power loss: a torn last line, which the next run cuts off).

The run that writes it, and its send log, are `_journal`'s.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeAlias, get_args

import attrs

from ._exceptions import ContentPolicyError, DownloadError, GemimgError, RefusalError
from ._prices import Cost
from ._results import Outcome, SaveError
from ._retry import Failure, classify

__all__ = [
    "MANIFEST_NAME",
    "STATUSES",
    "ManifestEntry",
    "Status",
    "keep_latest",
    "optional_str",
    "read_manifest",
    "scan",
    "status_of",
]

log = logging.getLogger("gemimg_async")

Status: TypeAlias = Literal["saved", "refused", "failed", "outcome_unknown"]
STATUSES: tuple[Status, ...] = get_args(Status)

MANIFEST_NAME = "manifest.jsonl"


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r:.80}")
    return tuple(value)


def optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a string or null, got {value!r:.80}")
    return value


@attrs.frozen(kw_only=True)
class ManifestEntry:
    """One line of the manifest: how a job ended. `paths` are relative to the manifest's folder."""

    id: str
    status: Status
    paths: tuple[str, ...] = ()
    error: str | None = None
    """`"{ExceptionType}: {message}"` when the job has no images."""
    attempts: int = 0
    request_ids: tuple[str, ...] = ()
    idempotency_keys: tuple[str, ...] = ()
    model: str | None = None
    size: str | None = None
    started: float = 0.0
    """Unix time the request got its place in the pool."""
    finished: float = 0.0
    prompt: str | None = None
    asked: str | None = None
    """The tier and ratio asked: `4K 16:9 (5504x3072)`."""
    delivered: tuple[str, ...] = ()
    """Each image's pixel size and the tier it was judged: `1376x768 (1K, smaller)`."""
    downgraded: bool = False
    """Some image came back at a lower tier or in another shape than asked."""
    fingerprint: str | None = None
    """A hash of what was asked (`_jobs.fingerprint`): a job changed under its id since is
    reported rather than skipped. None in manifests written before it was kept."""
    cost: Cost | None = None
    """What this sending of the job cost: the estimate, and the figure the relay reported where
    it did. None in manifests written before costs were kept."""
    endpoint: str | None = None
    """The endpoint its last attempt went to, with several (`--endpoints`); else None."""

    @classmethod
    def from_outcome(cls, outcome: Outcome, *, fingerprint: str | None = None) -> ManifestEntry:
        request, error = outcome.request, outcome.error
        assert request.id is not None
        key = outcome.idempotency_key
        return cls(
            id=request.id,
            status=status_of(error),
            paths=tuple(path.name for path in outcome.paths),
            error=None if error is None else f"{type(error).__name__}: {error}",
            attempts=outcome.attempts,
            request_ids=outcome.request_ids,
            idempotency_keys=(key,) if key else (),
            model=request.model,
            size=request.size,
            started=outcome.started,
            finished=outcome.finished,
            prompt=request.prompt,
            asked=str(outcome.result.asked) if outcome.result else None,
            delivered=tuple(str(d) for d in outcome.result.delivered if d is not None)
            if outcome.result
            else (),
            downgraded=outcome.result.downgraded if outcome.result else False,
            fingerprint=fingerprint,
            cost=outcome.cost,
            endpoint=outcome.endpoint,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "paths": list(self.paths),
            "error": self.error,
            "attempts": self.attempts,
            "request_ids": list(self.request_ids),
            "idempotency_keys": list(self.idempotency_keys),
            "model": self.model,
            "size": self.size,
            "started": round(self.started, 3),
            "finished": round(self.finished, 3),
            "prompt": self.prompt,
            "asked": self.asked,
            "delivered": list(self.delivered),
            "downgraded": self.downgraded,
            "fingerprint": self.fingerprint,
            "cost": None if self.cost is None else self.cost.to_json(),
            **({"endpoint": self.endpoint} if self.endpoint else {}),
        }

    def to_line(self) -> bytes:
        """The entry as one manifest line: JSON, newline-terminated, no other newline in it."""
        return json.dumps(self.to_json(), ensure_ascii=False).encode("utf-8", "replace") + b"\n"

    @classmethod
    def from_json(cls, doc: Any) -> ManifestEntry:
        """An entry from a parsed line; ValueError when it is none. Unknown keys are ignored."""
        if not isinstance(doc, dict):
            # ValueError, not TypeError: every kind of bad line is one error to the reader
            raise ValueError("a manifest line is a JSON object")  # noqa: TRY004
        job_id, status = doc.get("id"), doc.get("status")
        if not isinstance(job_id, str) or status not in STATUSES:
            raise ValueError("a manifest line needs an id and a known status")
        attempts, started, finished = (doc.get(k, 0) for k in ("attempts", "started", "finished"))
        if not all(isinstance(v, (int, float)) for v in (attempts, started, finished)):
            raise ValueError("attempts, started and finished are numbers")
        return cls(
            id=job_id,
            status=status,
            paths=_strings(doc.get("paths", [])),
            error=optional_str(doc.get("error")),
            attempts=int(attempts),
            request_ids=_strings(doc.get("request_ids", [])),
            idempotency_keys=_strings(doc.get("idempotency_keys", [])),
            model=optional_str(doc.get("model")),
            size=optional_str(doc.get("size")),
            started=float(started),
            finished=float(finished),
            prompt=optional_str(doc.get("prompt")),
            asked=optional_str(doc.get("asked")),
            delivered=_strings(doc.get("delivered", [])),
            downgraded=doc.get("downgraded") is True,
            fingerprint=optional_str(doc.get("fingerprint")),
            cost=None if doc.get("cost") is None else Cost.from_json(doc["cost"]),
            endpoint=optional_str(doc.get("endpoint")),
        )


def status_of(error: BaseException | None) -> Status:
    """The manifest status of a job that ended with `error` (None: it has its images)."""
    if error is None:
        return "saved"
    if isinstance(error, (RefusalError, ContentPolicyError)):
        return "refused"
    if isinstance(error, (DownloadError, SaveError, OSError)) or (
        isinstance(error, GemimgError) and classify(error) is Failure.OUTCOME_UNKNOWN
    ):
        # perhaps billed: an answer lost or given up on by a proxy (524), as the retry policy
        # classes it, or an image paid for that could not be fetched or written. A resend could
        # pay twice, so it waits for --retry-unknown (and keeps its Idempotency-Key).
        return "outcome_unknown"
    return "failed"


@attrs.frozen
class _Scan:
    """What a manifest holds: the latest entry per id, where that line starts, and where the
    last complete line ends."""

    entries: dict[str, ManifestEntry]
    starts: dict[str, int]
    good_size: int
    size: int


def scan(
    file: Iterable[bytes], path: Path, each: Callable[[ManifestEntry], None] | None = None
) -> _Scan:
    """What the manifest open as `file` holds (`path` names it in warnings); `each` is told
    every valid line's entry, in order (the ledger counts them all)."""
    entries: dict[str, ManifestEntry] = {}
    starts: dict[str, int] = {}
    offset = good = 0
    bad_at: int | None = None  # the start of the last line, when it is not a valid entry
    for number, line in enumerate(file, 1):
        if bad_at is not None:
            log.warning("%s:%d: not a manifest entry; ignored", path, number - 1)
            bad_at = None
        start, offset = offset, offset + len(line)
        try:
            if not line.endswith(b"\n"):
                raise ValueError("torn")  # noqa: TRY301 - one path for every bad line
            entry = ManifestEntry.from_json(json.loads(line))
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            bad_at = start
            continue
        entries[entry.id] = entry
        starts[entry.id] = start
        good = offset
        if each is not None:
            each(entry)
    return _Scan(entries, starts, good if bad_at is not None else offset, offset)


def keep_latest(into: dict[str, ManifestEntry], entries: Mapping[str, ManifestEntry]) -> None:
    """Put each of `entries` into `into` unless `into` has a later one of its id."""
    for job_id, entry in entries.items():
        if job_id not in into or entry.finished >= into[job_id].finished:
            into[job_id] = entry


def read_manifest(path: str | os.PathLike[str]) -> dict[str, ManifestEntry]:
    """The latest entry of every id in the manifest at `path` (a torn last line is left out)."""
    try:
        with Path(path).open("rb") as file:
            return scan(file, Path(path)).entries
    except FileNotFoundError:
        return {}
