"""A batch run's writer: manifest lines and the send log of one output folder, locked.

Just before a job's first attempt goes out (`RequestSent`, once its place and rate slot are
taken) its id goes to a send log beside the manifest, `OUT/.manifest-sent.jsonl`. A job in the
send log with no manifest line after it was in flight when a run died: the next run records it
`outcome_unknown` (it may have been billed) instead of paying for it again, unless its images are
on disk, which makes it `saved`. A job still waiting for its turn is not in it: never sent, it is
sent by the next run. The send log is emptied once every job it names has its line.

A shard of a batch (`--shard K/N`, `_shards`) keeps its own pair, `manifest.K-of-N.jsonl` and
`.manifest-sent.K-of-N.jsonl`, locked on their own: N runs share one folder, none writes another's
file. What other splits of the batch left there (a run without `--shard`, or of another N) is
read as done (`_foreign`).

Both files are opened with `O_NOFOLLOW`: a symlink planted in their place is refused, never
written through.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path
from typing import BinaryIO

import anyio
import attrs

from ._exceptions import ConfigurationError
from ._folders import BATCH_PROBE_BYTES, check_folder
from ._foreign import Foreign
from ._ledger import Ledger
from ._manifest import ManifestEntry, keep_latest, scan
from ._outdir import FolderImages
from ._sentjob import SentJob, record_dangling, unrecorded
from ._shards import WHOLE, Shard

if sys.platform != "win32":
    import fcntl

__all__ = ["Journal", "SentJob"]

log = logging.getLogger("gemimg_async")

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # not on Windows


def _append(fd: int, data: bytes) -> None:
    """One write of a whole line: a kill cannot interleave it with another."""
    written = os.write(fd, data)
    if written != len(data):
        raise OSError(errno.ENOSPC, f"wrote {written} of {len(data)} bytes of a manifest line")


@attrs.define
class Journal:
    """The manifest and the send log of one folder (of one shard), locked for one run."""

    folder: Path
    entries: dict[str, ManifestEntry]
    """The latest entry per id, in this manifest or another split's."""
    _fd: int
    _sent_fd: int
    _starts: dict[str, int]
    """Where the latest line of each id starts in the manifest."""
    _size: int
    ledger: Ledger = attrs.Factory(Ledger)
    """Every line's charge: what the folder's batch has spent, over all its runs."""
    shard: Shard = WHOLE
    _own: dict[str, ManifestEntry] = attrs.Factory(dict)
    """The latest entry per id in this manifest."""
    _foreign: Foreign = attrs.Factory(Foreign)
    _unsynced: bool = False

    @classmethod
    def open(cls, folder: Path, shard: Shard = WHOLE) -> Journal:
        """Check that `folder` takes files, lock `shard`'s manifest, read it (and other splits'),
        and cut a torn last line off. ConfigurationError for a folder that cannot be used (a
        symlink planted as the manifest or send log, another batch on it, a full disk)."""
        check_folder(folder, what="the output folder", probe_bytes=BATCH_PROBE_BYTES)
        path = folder / shard.manifest_name
        fd = _open_own(path)
        ledger = Ledger()
        foreign: Foreign | None = None
        try:
            _lock(fd, folder, shard)
            with _reader(fd) as file:
                found = scan(file, path, ledger.add)
            if found.good_size != found.size:
                log.warning(
                    "%s: cut off a torn last line (%d bytes)", path, found.size - found.good_size
                )
                os.ftruncate(fd, found.good_size)
                os.fsync(fd)
            foreign = Foreign.read(folder, shard, ledger.add)
            sent_fd = _open_own(folder / shard.sent_log_name)
        except BaseException:
            if foreign is not None:
                foreign.close()
            os.close(fd)
            raise
        entries = dict(foreign.entries)
        keep_latest(entries, found.entries)
        return cls(
            folder,
            entries,
            fd,
            sent_fd,
            found.starts,
            found.good_size,
            ledger,
            shard,
            found.entries,
            foreign,
        )

    @property
    def manifest(self) -> Path:
        return self.folder / self.shard.manifest_name

    def dangling(self) -> list[SentJob]:
        """The jobs a dead run sent and never recorded: from the send log, and those of this
        shard in other splits' send logs."""
        with _reader(self._sent_fd) as file:
            sent = unrecorded(file, self._starts)
        mine = {job.id for job in sent}
        return sent + [
            job
            for job in self._foreign.dangling(self._own)
            if self.shard.owns(job.id) and job.id not in mine
        ]

    def settle(self, images: FolderImages, *, reason: str, now: float) -> list[SentJob]:
        """Record each job of `dangling()`: saved if its images are among `images`, otherwise
        outcome_unknown for `reason` (each at its estimate, as a cap counts it); say so in a
        warning. Returns them; `sync` makes their lines durable."""
        dangling = self.dangling()
        record_dangling(
            dangling, images.complete, self.write, reason=reason, now=now, where="on disk"
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
        self._own[entry.id] = entry
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
        self._foreign.close()


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


def _lock(fd: int, folder: Path, shard: Shard) -> None:
    if sys.platform == "win32":  # no flock: one batch per folder is then the user's care
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigurationError(
            f"another gemimg-async batch is writing to {folder}"
            + ("" if shard.is_whole else f" as shard {shard}")
            + ": wait for it, or use another --out"
        ) from None
