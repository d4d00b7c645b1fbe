"""The manifest of a batch folder: one JSON line per finished job, and the images beside it.

The manifest is append-only: one `os.write` of a whole line per finished job on an `O_APPEND`
descriptor, then an fsync. The latest line of an id is that job's state. A kill -9 leaves at worst
no line for the jobs it interrupted (power loss: a torn last line, which the next run cuts off).

Before a job is handed to `Client.map` (which sends it at once) its id goes to a send log beside
the manifest, `OUT/.manifest-sent.jsonl`. A job in the send log with no manifest line after it was
in flight when a run died: the next run records it `outcome_unknown` (it may have been billed)
instead of paying for it again, unless its images are on disk, which makes it `saved`. The send log
is emptied once every job it names has its line.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeAlias, get_args

import anyio
import attrs

from ._exceptions import (
    ConfigurationError,
    ContentPolicyError,
    DownloadError,
    OutcomeUnknownError,
    RefusalError,
)
from ._models import ImageRequest
from ._results import Outcome
from ._sinks import TEMP_PREFIX

if sys.platform != "win32":
    import fcntl

__all__ = [
    "MANIFEST_NAME",
    "STATUSES",
    "FolderImages",
    "Journal",
    "ManifestEntry",
    "Status",
    "read_manifest",
    "status_of",
]

log = logging.getLogger("gemimg_async")

Status: TypeAlias = Literal["saved", "refused", "failed", "outcome_unknown"]
STATUSES: tuple[Status, ...] = get_args(Status)

MANIFEST_NAME = "manifest.jsonl"
_SENT_LOG_NAME = ".manifest-sent.jsonl"
_IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "gif"})
_STALE_TEMP_SECONDS = 15 * 60
"""A temporary image file untouched this long belongs to a dead process (downloads time out at
60 s between chunks)."""


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r:.80}")
    return tuple(value)


def _optional_str(value: Any) -> str | None:
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

    @classmethod
    def from_outcome(cls, outcome: Outcome) -> ManifestEntry:
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
            error=_optional_str(doc.get("error")),
            attempts=int(attempts),
            request_ids=_strings(doc.get("request_ids", [])),
            idempotency_keys=_strings(doc.get("idempotency_keys", [])),
            model=_optional_str(doc.get("model")),
            size=_optional_str(doc.get("size")),
            started=float(started),
            finished=float(finished),
            prompt=_optional_str(doc.get("prompt")),
        )


def status_of(error: BaseException | None) -> Status:
    """The manifest status of a job that ended with `error` (None: it has its images)."""
    if error is None:
        return "saved"
    if isinstance(error, (RefusalError, ContentPolicyError)):
        return "refused"
    if isinstance(error, (OutcomeUnknownError, DownloadError, OSError)):
        # sent and answered, or perhaps: a lost answer, an image that could not be fetched or
        # written. A resend could pay twice, so it waits for --retry-unknown.
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


def _scan(path: Path) -> _Scan:
    entries: dict[str, ManifestEntry] = {}
    starts: dict[str, int] = {}
    offset = good = 0
    bad_at: int | None = None  # the start of the last line, when it is not a valid entry
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return _Scan(entries, starts, 0, 0)
    with file:
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
    return _Scan(entries, starts, good if bad_at is not None else offset, offset)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, ManifestEntry]:
    """The latest entry of every id in the manifest at `path` (a torn last line is left out)."""
    return _scan(Path(path)).entries


def _append(fd: int, data: bytes) -> None:
    """One write of a whole line: a kill cannot interleave it with another."""
    written = os.write(fd, data)
    if written != len(data):
        raise OSError(errno.ENOSPC, f"wrote {written} of {len(data)} bytes of a manifest line")


@attrs.define
class Journal:
    """The manifest and the send log of one folder, locked for one run."""

    folder: Path
    entries: dict[str, ManifestEntry]
    """The latest entry per id."""
    _fd: int
    _sent_fd: int
    _starts: dict[str, int]
    """Where the latest line of each id starts in the manifest."""
    _size: int
    _unsynced: bool = False

    @classmethod
    def open(cls, folder: Path) -> Journal:
        """Lock the folder's manifest, read it, and cut a torn last line off."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MANIFEST_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            _lock(fd, folder)
            scan = _scan(path)
            if scan.good_size != scan.size:
                log.warning(
                    "%s: cut off a torn last line (%d bytes)", path, scan.size - scan.good_size
                )
                os.ftruncate(fd, scan.good_size)
                os.fsync(fd)
            flags = os.O_RDWR | os.O_CREAT | os.O_APPEND
            sent_fd = os.open(folder / _SENT_LOG_NAME, flags, 0o644)
        except BaseException:
            os.close(fd)
            raise
        return cls(folder, scan.entries, fd, sent_fd, scan.starts, scan.good_size)

    def dangling(self) -> list[dict[str, Any]]:
        """The jobs a dead run sent and never recorded (from the send log)."""
        with Path(self.folder / _SENT_LOG_NAME).open("rb") as file:
            sent = []
            for line in file:
                try:
                    doc = json.loads(line)
                    job_id, at = doc["id"], doc["at"]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn line: its job was not handed over yet
                if self._starts.get(job_id, -1) < at:
                    sent.append(doc)
        return sent

    def mark_sent(self, request: ImageRequest, started: float) -> None:
        """Note, before `request` is sent, that it is about to be (no fsync: a kill -9 keeps
        written data; the next manifest fsync makes it durable)."""
        doc = {
            "id": request.id,
            "key": request.idempotency_key,
            "at": self._size,
            "n": request.n,
            "model": request.model,
            "size": request.size,
            "started": round(started, 3),
            "prompt": request.prompt,
        }
        _append(
            self._sent_fd, json.dumps(doc, ensure_ascii=False).encode("utf-8", "replace") + b"\n"
        )

    def write(self, entry: ManifestEntry) -> None:
        """Append `entry`'s line; `sync` makes it durable."""
        line = entry.to_line()
        _append(self._fd, line)
        self._starts[entry.id] = self._size
        self._size += len(line)
        self.entries[entry.id] = entry
        self._unsynced = True

    async def sync(self) -> None:
        if self._unsynced:
            self._unsynced = False
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_fsync_all, self._fd, self._sent_fd)

    def forget_sent(self) -> None:
        """Empty the send log: every job in it has its manifest line, synced."""
        os.ftruncate(self._sent_fd, 0)

    def close(self) -> None:
        os.close(self._sent_fd)
        os.close(self._fd)  # releases the lock


def _fsync_all(*fds: int) -> None:
    for fd in fds:
        os.fsync(fd)


def _lock(fd: int, folder: Path) -> None:
    if sys.platform == "win32":  # no flock: one batch per folder is then the user's care
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigurationError(
            f"another gemimg-async batch is writing to {folder}: wait for it, or use another --out"
        ) from None


@attrs.frozen
class FolderImages:
    """The images a folder holds, by job id and index: `{id}_{i}.{ext}`."""

    names: frozenset[str]
    by_job: Mapping[str, Mapping[int, str]]

    @classmethod
    def scan(cls, folder: Path) -> FolderImages:
        """One pass over `folder`; stale temporary files of dead runs are removed on the way."""
        names: set[str] = set()
        by_job: dict[str, dict[int, str]] = {}
        now = time.time()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(TEMP_PREFIX) and name.endswith(".part"):
                    _remove_stale(entry, now)
                    continue
                stem, dot, extension = name.rpartition(".")
                job_id, underscore, index = stem.rpartition("_")
                if not (dot and underscore and index.isascii() and index.isdigit()):
                    continue
                if extension.lower() in _IMAGE_EXTENSIONS:
                    names.add(name)
                    by_job.setdefault(job_id, {})[int(index)] = name
        return cls(frozenset(names), by_job)

    def complete(self, job_id: str, n: int) -> tuple[str, ...] | None:
        """The names of images 0..n-1 of `job_id`, when all are here."""
        found = self.by_job.get(job_id, {})
        if all(index in found for index in range(n)):
            return tuple(found[index] for index in range(n))
        return None


def _remove_stale(entry: os.DirEntry[str], now: float) -> None:
    try:
        if now - entry.stat().st_mtime > _STALE_TEMP_SECONDS:
            Path(entry.path).unlink()
    except FileNotFoundError:
        pass
