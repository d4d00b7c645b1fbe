"""A batch run's writer: manifest lines and the send log of one output folder, locked.

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
from pathlib import Path
from typing import Any

import anyio
import attrs

from ._exceptions import ConfigurationError
from ._manifest import MANIFEST_NAME, ManifestEntry, optional_str, scan
from ._models import ImageRequest

if sys.platform != "win32":
    import fcntl

__all__ = ["Journal", "SentJob"]

log = logging.getLogger("gemimg_async")

_SENT_LOG_NAME = ".manifest-sent.jsonl"


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

    @classmethod
    def of(cls, request: ImageRequest, *, at: int, started: float) -> SentJob:
        assert request.id is not None
        return cls(
            id=request.id,
            key=request.idempotency_key,
            at=at,
            n=request.n,
            model=request.model,
            size=request.size,
            started=started,
            prompt=request.prompt,
        )

    def unanswered(
        self, names: tuple[str, ...] | None, *, reason: str, finished: float
    ) -> ManifestEntry:
        """This job's manifest entry when no answer was recorded: saved if its images are on
        disk (`names`), otherwise outcome_unknown for `reason` (it may have been billed)."""
        return ManifestEntry(
            id=self.id,
            status="saved" if names else "outcome_unknown",
            paths=names or (),
            error=None if names else reason,
            idempotency_keys=(self.key,) if self.key else (),
            model=self.model,
            size=self.size,
            started=self.started,
            finished=finished,
            prompt=self.prompt,
        )

    def to_line(self) -> bytes:
        doc = attrs.asdict(self)
        doc["started"] = round(self.started, 3)
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
    _unsynced: bool = False

    @classmethod
    def open(cls, folder: Path) -> Journal:
        """Lock the folder's manifest, read it, and cut a torn last line off."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MANIFEST_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            _lock(fd, folder)
            found = scan(path)
            if found.good_size != found.size:
                log.warning(
                    "%s: cut off a torn last line (%d bytes)", path, found.size - found.good_size
                )
                os.ftruncate(fd, found.good_size)
                os.fsync(fd)
            flags = os.O_RDWR | os.O_CREAT | os.O_APPEND
            sent_fd = os.open(folder / _SENT_LOG_NAME, flags, 0o644)
        except BaseException:
            os.close(fd)
            raise
        return cls(folder, found.entries, fd, sent_fd, found.starts, found.good_size)

    def dangling(self) -> list[SentJob]:
        """The jobs a dead run sent and never recorded (from the send log)."""
        with Path(self.folder / _SENT_LOG_NAME).open("rb") as file:
            sent = []
            for line in file:
                try:
                    job = SentJob.from_json(json.loads(line))
                except ValueError:
                    continue  # a torn line: its job was not handed over yet
                if self._starts.get(job.id, -1) < job.at:
                    sent.append(job)
        return sent

    def mark_sent(self, request: ImageRequest, started: float) -> SentJob:
        """Note, before `request` is sent, that it is about to be (no fsync: a kill -9 keeps
        written data; the next manifest fsync makes it durable)."""
        sent = SentJob.of(request, at=self._size, started=started)
        _append(self._sent_fd, sent.to_line())
        return sent

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
