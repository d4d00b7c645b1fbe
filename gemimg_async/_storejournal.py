"""A batch run's writer when its output is object storage: the manifest and the send log of one
shard, as append-only logs in the store (`Store.append`), under the shard's object lock.

It keeps `_journal.Journal`'s contract, adapted to a store that has no files:

- A manifest line is kept in memory by `write` and appended by `sync` (the lines of one sync go
  up as one object: `FsspecStore.append`), so a line is in the store before the batch goes on.
- A send-log line is kept by `log_sent` (the `RequestSent` event) and appended by `flush_sent`,
  which the batch's `Destination` awaits before the POST of that attempt: a job is in the store's
  send log before it can be billed. Lines of requests going out together go up as one object.
- A job in the send log with no manifest line after it (its `at`: the manifest's size when it
  was sent) was in flight when a run died, on any machine: the next run records it
  `outcome_unknown` (or `saved`, when its images are in the store) instead of paying again.
- The shard's lock is `.manifest.K-of-N.lock` (`_objlock`), renewed by `keep_lock` while the
  run lasts; other splits' manifests (another N, or a run without `--shard`) are read as done.
- At the end the send log is cleared (every job in it has its line) and the manifest's objects
  folded into one (`Store.compact`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import anyio
import attrs

from ._exceptions import ConfigurationError
from ._ledger import Ledger
from ._manifest import ManifestEntry, keep_latest, scan
from ._models import ImageRequest
from ._objlock import DEFAULT_LOCK_TTL, ObjectLock
from ._objstore import FsspecStore
from ._outdir import FolderImages
from ._sentjob import SentJob, record_dangling, unrecorded
from ._shards import MANIFEST_PATTERN, WHOLE, Shard, manifest_shard

__all__ = ["StoreJournal"]

log = logging.getLogger("gemimg_async")


@attrs.define
class StoreJournal:
    """The manifest and the send log of one shard in a store, locked for one run."""

    store: FsspecStore
    shard: Shard
    lock: ObjectLock
    entries: dict[str, ManifestEntry]
    """The latest entry per id, in this manifest or another split's."""
    ledger: Ledger
    _starts: dict[str, int]
    _size: int
    _own: dict[str, ManifestEntry]
    _foreign_sent: list[SentJob]
    _sent_data: bytes
    """The send log as the run found it."""
    _lines: bytearray = attrs.Factory(bytearray)
    _sent_lines: bytearray = attrs.Factory(bytearray)
    _unsynced: list[bytes] = attrs.Factory(list)
    _unsent: list[bytes] = attrs.Factory(list)
    _sent_lock: anyio.Lock = attrs.Factory(anyio.Lock)
    _sent_count: int = 0
    _forgot_at: int | None = None

    @classmethod
    async def open(
        cls, store: FsspecStore, shard: Shard = WHOLE, *, ttl: float = DEFAULT_LOCK_TTL
    ) -> StoreJournal:
        """Check that `store` takes objects, take the shard's lock, read its manifest and send
        log (and other splits'). ConfigurationError when another run holds the shard."""
        await store.check()
        lock = ObjectLock(store, shard.lock_name, ttl)
        await lock.acquire()
        try:
            return await cls._read(store, shard, lock)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await lock.release()
            raise

    @classmethod
    async def _read(cls, store: FsspecStore, shard: Shard, lock: ObjectLock) -> StoreJournal:
        ledger = Ledger()
        name = shard.manifest_name
        data = await store.read_log(name)
        found = scan(io.BytesIO(data), Path(store.url) / name, ledger.add)
        entries: dict[str, ManifestEntry] = {}
        foreign_sent: list[SentJob] = []
        logs = await store.logs()
        for other in shard.foreign(n for n in logs if MANIFEST_PATTERN.fullmatch(n)):
            theirs = scan(
                io.BytesIO(await store.read_log(other)), Path(store.url) / other, ledger.add
            )
            keep_latest(entries, theirs.entries)
            split = manifest_shard(other)
            assert split is not None
            if split.sent_log_name in logs:
                sent = await store.read_log(split.sent_log_name)
                foreign_sent += unrecorded(sent.splitlines(), theirs.starts)
        keep_latest(entries, found.entries)
        sent_data = await store.read_log(shard.sent_log_name)
        return cls(
            store,
            shard,
            lock,
            entries,
            ledger,
            found.starts,
            len(data),
            found.entries,
            foreign_sent,
            sent_data,
        )

    @property
    def manifest(self) -> Path:
        return Path(self.store.url) / self.shard.manifest_name

    def dangling(self) -> list[SentJob]:
        """The jobs a dead run sent and never recorded (this shard's, in any split's log)."""
        sent = unrecorded(self._sent_data.splitlines(), self._starts)
        mine = {job.id for job in sent}
        return sent + [
            job
            for job in self._foreign_sent
            if self.shard.owns(job.id)
            and job.id not in mine
            and ((entry := self._own.get(job.id)) is None or entry.finished < job.started)
        ]

    def settle(self, images: FolderImages, *, reason: str, now: float) -> list[SentJob]:
        """Record each job of `dangling()`: saved when its images are in the store, else
        outcome_unknown for `reason`; `sync` puts the lines in the store."""
        dangling = self.dangling()
        record_dangling(
            dangling,
            images.complete,
            self.write,
            reason=reason,
            now=now,
            where=f"in {self.store.url}",
        )
        return dangling

    def log_sent(self, sent: SentJob) -> SentJob:
        """Keep `sent`'s line for `flush_sent`, which the POST waits for. Returns the line."""
        sent = attrs.evolve(sent, at=self._size)
        self._sent_lines += sent.to_line()
        self._sent_count += 1
        return sent

    async def flush_sent(self, request: ImageRequest | None = None) -> None:
        """Put the send-log lines kept so far in the store (the `Destination`'s `before_send`):
        once it returns, the line of `request` (logged before) is there."""
        del request  # every line kept so far goes: this one's among them
        async with self._sent_lock:
            if self._sent_lines:
                self._unsent.append(bytes(self._sent_lines))
                self._sent_lines = bytearray()
            await self._put(self.shard.sent_log_name, self._unsent)

    async def _put(self, log: str, pieces: list[bytes]) -> None:
        """Append `pieces` to `log` in order, each removed once it is there. A piece whose
        append failed stays first, to be appended again as it was (an append whose answer was
        lost, retried with the same bytes, is the same object)."""
        with anyio.CancelScope(shield=True):  # a piece half put is not known to be there
            while pieces:
                await self.store.append(log, pieces[0])
                del pieces[0]

    def write(self, entry: ManifestEntry) -> None:
        """Keep `entry`'s line; `sync` puts it in the store."""
        line = entry.to_line()
        self._lines += line
        self._starts[entry.id] = self._size
        self._size += len(line)
        self.entries[entry.id] = entry
        self._own[entry.id] = entry
        self.ledger.add(entry)

    async def sync(self) -> None:
        if self._lines:
            self._unsynced.append(bytes(self._lines))
            self._lines = bytearray()
        await self._put(self.shard.manifest_name, self._unsynced)

    def forget_sent(self) -> None:
        """Every job in the send log has its line, in the store: the log is cleared at
        `aclose` (unless a job is sent meanwhile)."""
        self._forgot_at = self._sent_count

    async def keep_lock(self, lost: Callable[[str], None]) -> None:
        """Renew the shard's lock until cancelled; tell `lost` why when another run took it
        over (the batch then takes no new job) or it cannot be renewed."""
        while True:
            await anyio.sleep(self.lock.ttl / 3)
            try:
                await self.lock.renew()
            except OSError as exc:  # LockLostError is a ConfigurationError
                log.warning("could not renew %s in %s: %s", self.lock.name, self.store.url, exc)
            except ConfigurationError as exc:
                lost(str(exc))
                return

    async def aclose(self) -> None:
        """Clear the send log when `forget_sent` still holds, fold the manifest, unlock."""
        with anyio.CancelScope(shield=True):
            try:
                await self.sync()
                if self._forgot_at == self._sent_count and not (self._sent_lines or self._unsent):
                    await self.store.clear_log(self.shard.sent_log_name)
                await self.store.compact(self.shard.manifest_name)
            finally:
                await self.lock.release()
