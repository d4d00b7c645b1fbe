"""What other splits of a batch left in its folder, read by a run that does not write them.

A folder may hold the manifests of more than one split of its batch: `manifest.jsonl` of a run
without `--shard`, and `manifest.K-of-N.jsonl` of sharded runs, of one N or several. A run
writes only its own manifest (its shard's); the manifests of another split (another N:
`Shard.foreign`) it reads as done before it starts, so that a job saved by any split is saved,
and a job another split sent and never recorded (in that split's send log, with no line after)
is recorded `outcome_unknown` rather than paid for again. The shards of its own split it does
not read: they own other jobs.

Each foreign manifest is held with a shared lock for the whole run: a run of that split holds
its manifest's exclusive lock, so two splits of one batch cannot run at once (each would send
what the other sends).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import attrs

from ._exceptions import ConfigurationError
from ._manifest import ManifestEntry, keep_latest, scan
from ._sentjob import SentJob, unrecorded
from ._shards import MANIFEST_PATTERN, Shard, manifest_shard

if sys.platform != "win32":
    import fcntl

__all__ = ["Foreign"]

log = logging.getLogger("gemimg_async")

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@attrs.define
class Foreign:
    """The manifests of the other splits in a folder: their latest entries, the jobs their send
    logs hold unrecorded, and the descriptors that keep them locked (`close`)."""

    entries: dict[str, ManifestEntry] = attrs.Factory(dict)
    sent: list[SentJob] = attrs.Factory(list)
    """Jobs a foreign split sent and did not record (its send log, no manifest line after)."""
    _fds: list[int] = attrs.Factory(list)

    @classmethod
    def read(
        cls,
        folder: Path,
        shard: Shard,
        each: Callable[[ManifestEntry], None] | None = None,
        *,
        lock: bool = True,
    ) -> Foreign:
        """Read and lock (shared; not with `lock=False`) every foreign manifest of `folder`;
        `each` is told every valid line of them (the ledger counts what the batch spent).
        ConfigurationError when a run of another split holds one."""
        found = cls()
        try:
            names = sorted(entry.name for entry in os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return found
        try:
            for name in shard.foreign(n for n in names if MANIFEST_PATTERN.fullmatch(n)):
                found._read_one(folder, name, names, each, lock=lock)
        except BaseException:
            found.close()
            raise
        return found

    def _read_one(
        self,
        folder: Path,
        name: str,
        names: list[str],
        each: Callable[[ManifestEntry], None] | None,
        *,
        lock: bool,
    ) -> None:
        path = folder / name
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT):
                return  # a symlink is none of ours; a manifest gone meanwhile holds nothing
            raise
        self._fds.append(fd)
        other = manifest_shard(name)
        if lock:
            _share(fd, folder, other)
        with os.fdopen(os.dup(fd), "rb") as file:
            found = scan(file, path, each)
        keep_latest(self.entries, found.entries)
        assert other is not None
        if other.sent_log_name in names:
            with contextlib.suppress(OSError):
                data = (folder / other.sent_log_name).read_bytes()
                self.sent += unrecorded(data.splitlines(), found.starts)

    def dangling(self, own: dict[str, ManifestEntry]) -> list[SentJob]:
        """The jobs foreign splits sent and nobody recorded since: not in `own` (the reader's
        manifest) with a line that ended after they were sent."""
        return [
            job
            for job in self.sent
            if (entry := own.get(job.id)) is None or entry.finished < job.started
        ]

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _share(fd: int, folder: Path, shard: Shard | None) -> None:
    if sys.platform == "win32":  # no flock: one split at a time is then the user's care
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        which = "a batch without --shard" if shard is None or shard.is_whole else f"shard {shard}"
        raise ConfigurationError(
            f"{which} is writing to {folder}: a batch split another way cannot run beside it "
            "(each would send the other's jobs). Wait for it, or run with its --shard"
        ) from None
