"""Where a batch writes: a folder (`_journal`, atomic files) or object storage (`_storejournal`,
uploads), behind one small interface, so `BatchRun` reads the same either way.

    async with batch_output(out, shard) as output:
        output.journal          # manifest and send log, locked for the run
        output.save_to          # what `Client.map` is given: the folder, or a `Destination`
        await output.images()   # the images there, by job
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import anyio
import attrs

from ._destination import Destination
from ._journal import Journal
from ._ledger import Ledger
from ._manifest import ManifestEntry
from ._objstore import FsspecStore, is_object_url, open_store
from ._outdir import FolderImages
from ._sentjob import SentJob
from ._shards import Shard
from ._storejournal import StoreJournal
from ._tasks import background
from ._upload_sink import Aborts, upload_destination

__all__ = ["BatchJournal", "BatchOutput", "batch_output", "out_location"]


class BatchJournal(Protocol):
    """What a batch run needs of its journal (`Journal`, `StoreJournal`)."""

    entries: dict[str, ManifestEntry]
    ledger: Ledger

    @property
    def manifest(self) -> Path: ...
    def write(self, entry: ManifestEntry) -> None: ...
    async def sync(self) -> None: ...
    def settle(self, images: FolderImages, *, reason: str, now: float) -> list[SentJob]: ...
    def log_sent(self, sent: SentJob) -> SentJob: ...
    def forget_sent(self) -> None: ...


def out_location(out: str | os.PathLike[str]) -> str | Path:
    """A batch's `out`: an object storage URL as it is (`s3://bucket/prefix`), else a folder."""
    return str(out) if is_object_url(out) else Path(out)


@attrs.define
class BatchOutput:
    """A batch's output, open for one run: see the module's docstring."""

    journal: BatchJournal
    save_to: Path | Destination
    _folder: Path | None = None
    _store: FsspecStore | None = None

    async def images(self, *, sweep: bool = False) -> FolderImages:
        """The images there; with `sweep` (as a run starts, holding the lock), a folder's
        temporary files of dead processes are removed on the way."""
        if self._store is not None:
            return FolderImages.from_names(await self._store.images())
        assert self._folder is not None
        return FolderImages.scan(self._folder, sweep=sweep)


@asynccontextmanager
async def batch_output(
    out: str | Path, shard: Shard, lost: Callable[[str], None]
) -> AsyncIterator[BatchOutput]:
    """`out` open for one run of `shard`: its journal locked and read (ConfigurationError when
    it cannot be used); unlocked, and in a store its uploads aborted or done, at the end. A
    store's lock taken over by another run meanwhile is told to `lost`."""
    if isinstance(out, Path):
        journal = Journal.open(out, shard)
        try:
            yield BatchOutput(journal, out, folder=out)
        finally:
            journal.close()
        return
    store = open_store(out)
    assert isinstance(store, FsspecStore)
    try:
        own = await StoreJournal.open(store, shard)
        aborts = Aborts()
        try:
            async with background(own.keep_lock(lost)):
                yield BatchOutput(
                    own, upload_destination(store, aborts, own.flush_sent), store=store
                )
        finally:
            with anyio.CancelScope(shield=True):
                await aborts.drain()
                await own.aclose()
    finally:
        await store.aclose()
