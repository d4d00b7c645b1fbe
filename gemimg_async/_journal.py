"""A batch run's writer: manifest lines and the send log of one output folder, locked.

Just before a job's first attempt goes out (`RequestSent`, once its place and rate slot are
taken) its id goes to a send log beside the manifest, `OUT/.manifest-sent.jsonl`. A job in the
send log with no manifest line after it was in flight when a run died: the next run records it
`outcome_unknown` (it may have been billed) instead of paying for it again, unless its images are
on disk, which makes it `saved`. A job still waiting for its turn is not in it: never sent, it is
sent by the next run. The send log is emptied once every job it names has its line.

Both files are opened with `O_NOFOLLOW`: a symlink planted in their place is refused, never
written through.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import attrs

from ._exceptions import ConfigurationError
from ._folders import BATCH_PROBE_BYTES, check_folder
from ._ledger import Ledger
from ._manifest import MANIFEST_NAME, ManifestEntry, optional_str, scan
from ._models import ImageRequest
from ._outdir import FolderImages
from ._prices import Cost

if sys.platform != "win32":
    import fcntl

__all__ = ["Journal", "SentJob"]

log = logging.getLogger("gemimg_async")

_SENT_LOG_NAME = ".manifest-sent.jsonl"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # not on Windows


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
    ledger: Ledger = attrs.Factory(Ledger)
    """Every line's charge: what the folder's batch has spent, over all its runs."""
    _unsynced: bool = False

    @classmethod
    def open(cls, folder: Path) -> Journal:
        """Check that `folder` takes files, lock its manifest, read it, and cut a torn last line
        off. ConfigurationError for a folder that cannot be used (a symlink planted as the
        manifest or send log, another batch on it, a full disk)."""
        check_folder(folder, what="the output folder", probe_bytes=BATCH_PROBE_BYTES)
        path = folder / MANIFEST_NAME
        fd = _open_own(path)
        ledger = Ledger()
        try:
            _lock(fd, folder)
            with _reader(fd) as file:
                found = scan(file, path, ledger.add)
            if found.good_size != found.size:
                log.warning(
                    "%s: cut off a torn last line (%d bytes)", path, found.size - found.good_size
                )
                os.ftruncate(fd, found.good_size)
                os.fsync(fd)
            sent_fd = _open_own(folder / _SENT_LOG_NAME)
        except BaseException:
            os.close(fd)
            raise
        return cls(folder, found.entries, fd, sent_fd, found.starts, found.good_size, ledger)

    def dangling(self) -> list[SentJob]:
        """The jobs a dead run sent and never recorded (from the send log)."""
        sent = []
        with _reader(self._sent_fd) as file:
            for line in file:
                try:
                    job = SentJob.from_json(json.loads(line))
                except ValueError:
                    continue  # a torn line: its job was not sent yet
                if self._starts.get(job.id, -1) < job.at:
                    sent.append(job)
        return sent

    def settle(self, images: FolderImages, *, reason: str, now: float) -> list[SentJob]:
        """Record each job of `dangling()`: saved if its images are among `images`, otherwise
        outcome_unknown for `reason` (each at its estimate, as a cap counts it); say so in a
        warning. Returns them; `sync` makes their lines durable."""
        dangling = self.dangling()
        unknown = 0
        for sent in dangling:
            entry = sent.unanswered(images.complete(sent.id, sent.n), reason=reason, finished=now)
            self.write(entry)
            unknown += entry.status == "outcome_unknown"
        if dangling:
            log.warning(
                "%d job(s) were in flight when an earlier run ended without recording them: "
                "%d have their images on disk (saved), %d are outcome_unknown (may have been "
                "billed; sent again only with --retry-unknown)",
                len(dangling),
                len(dangling) - unknown,
                unknown,
            )
        return dangling

    def log_sent(self, sent: SentJob) -> SentJob:
        """Note, just before its first attempt goes out, that `sent` is sent (no fsync: a kill
        -9 keeps written data; the next manifest fsync makes it durable). Returns the line."""
        sent = attrs.evolve(sent, at=self._size)
        _append(self._sent_fd, sent.to_line())
        return sent

    def write(self, entry: ManifestEntry) -> None:
        """Append `entry`'s line; `sync` makes it durable."""
        line = entry.to_line()
        _append(self._fd, line)
        self._starts[entry.id] = self._size
        self._size += len(line)
        self.entries[entry.id] = entry
        self.ledger.add(entry)
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


def _open_own(path: Path) -> int:
    """Open (or make) one of the batch's own files for appending, never through a symlink."""
    if path.is_symlink():  # said plainly here; O_NOFOLLOW closes the race where it exists
        raise _planted(path)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | _NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _planted(path) from None
        raise ConfigurationError(f"cannot open {path} ({exc.strerror or exc})") from None


def _planted(path: Path) -> ConfigurationError:
    return ConfigurationError(
        f"{path} is a symbolic link: a batch writes only files of its own in its folder. "
        "Remove the link, or choose another output folder"
    )


def _reader(fd: int) -> BinaryIO:
    """`fd`'s content from the start, through a descriptor of its own (the file stays open)."""
    file = os.fdopen(os.dup(fd), "rb")
    file.seek(0)
    return file


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
