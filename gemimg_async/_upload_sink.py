"""An image streamed up to a `Store` as it arrives: `ImageUpload` as the `ImageSink` a `Saver`
writes into, for a batch whose output is object storage.

The bytes go to an upload opened at the first write (`Store.open_image`: a multipart upload on
S3, one part in memory at most, besides one on its way); `settle` names it from its bytes
(`{stem}_{index}.{ext}`) and commits it, so an object appears under its name only whole. Any
failure, cancellation or `abort` aborts the upload: nothing appears under the name. Aborting is
a network call, and `ImageSink.abort` is not awaited: it runs as a task of `Aborts`, which its
owner drains (awaits) before it closes the store.

An upload that fails part-way cannot give its image back from memory (`salvage` is None): the
parts already sent are gone with it; the image is recorded unsaved, its URL kept if it had one.
Images go up as the relay sent them: provenance chunks (`metadata`) are for files.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import attrs

from ._destination import Destination
from ._head import Head, HeadSink, head_field
from ._models import GeneratedImage, ImageRequest, check_stem
from ._pngmeta import PngTagger
from ._storage import ImageUpload, Store

__all__ = ["Aborts", "UploadSink", "upload_destination"]


@attrs.define
class Aborts:
    """Uploads being aborted in the background: every one awaited by `drain`."""

    _tasks: set[asyncio.Task[None]] = attrs.Factory(set)

    def start(self, abort: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.get_running_loop().create_task(abort())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait until every abort started has ended (errors are the store's to log)."""
        with anyio.CancelScope(shield=True):
            while self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)


@attrs.define
class UploadSink(HeadSink):
    """One image on its way to `store`, named and committed at `settle`; see the module."""

    store: Store
    max_bytes: int
    aborts: Aborts
    _head: Head = head_field()
    _upload: ImageUpload | None = None
    _failure: OSError | None = None
    _over: bool = False

    async def write(self, data: bytes) -> None:
        self._head.take(data)
        if self._failure is not None or self._over:
            return  # the upload is gone: settle raises why
        try:
            if self._upload is None:
                self._upload = await self.store.open_image()
            await self._upload.write(data)
        except OSError as exc:
            self._failure = exc
            self.abort()

    async def settle(
        self, index: int, stem: str, *, overwrite: bool, fallback: str | None = None
    ) -> GeneratedImage:
        """Commit the image as `{stem}_{index}.{ext}`, the extension from its bytes. A name
        taken is replaced only with `overwrite`; otherwise FileExistsError, or, given a
        `fallback`, the name `{stem}_{index}-{fallback}.{ext}`."""
        try:
            name = await self._name(index, stem, overwrite=overwrite, fallback=fallback)
            upload = self._upload or await self.store.open_image()
            self._upload = None  # commit aborts it itself if it fails
            self._over = True
            name = await upload.commit(name)
        except BaseException:
            self.abort()
            raise
        return self._head.image(index, path=Path(self.store.url) / name)

    async def _name(self, index: int, stem: str, *, overwrite: bool, fallback: str | None) -> str:
        info = self._head.info()
        name = f"{check_stem(stem)}_{index}.{info.extension}"
        if self._failure is not None:
            raise self._failure
        if not overwrite and name in await self.store.images():
            if fallback is None:
                raise FileExistsError(f"{name} exists in {self.store.url}")
            name = f"{check_stem(stem)}_{index}-{fallback}.{info.extension}"
        return name

    def salvage(self) -> bytes | None:
        """None: the bytes went up as they came (see the module's docstring)."""
        self.abort()
        return None

    def abort(self) -> None:
        self._over = True
        upload, self._upload = self._upload, None
        if upload is not None:
            self.aborts.start(upload.abort)


def upload_destination(
    store: Store,
    aborts: Aborts,
    before_send: Callable[[ImageRequest], Coroutine[Any, Any, None]] | None = None,
) -> Destination:
    """Images into `store` (each an `UploadSink`), `before_send` awaited before each POST."""

    def open_sink(max_bytes: int, tagging: Callable[[], PngTagger] | None) -> UploadSink:
        del tagging  # images go up as they came
        return UploadSink(store, max_bytes, aborts)

    return Destination(store.url, open_sink, before_send)
