"""Images on their way up to object storage (`_objstore`'s): a multipart upload on S3, a
temporary object moved into place elsewhere. See `_objstore` for what each guarantees."""

from __future__ import annotations

import contextlib
import functools
import io
from typing import Any, Protocol

import anyio
import attrs

from ._storage import UPLOAD_HOP

__all__ = ["MovedUpload", "S3Upload"]


class _Store(Protocol):
    """What an upload needs of its store."""

    @property
    def fs(self) -> Any: ...
    @property
    def part_size(self) -> int: ...
    def path(self, name: str) -> str: ...
    async def run(self, call: Any, *args: Any) -> Any: ...


@attrs.define
class S3Upload:
    """An image going up to S3: one multipart part per `part_size`, completed at commit."""

    store: _Store
    name: str
    bucket: str
    key: str
    size: int = 0
    _pending: io.BytesIO = attrs.field(factory=io.BytesIO)
    """The part being gathered: handed to botocore as it is (a stream: aiohttp sends raw bytes
    from the loop in one piece, and warns), never copied."""
    _upload_id: str | None = None
    _parts: list[dict[str, Any]] = attrs.field(factory=list)
    _done: bool = False

    def _s3(self, method: str, **kwargs: Any) -> Any:
        return self.store.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)

    async def write(self, data: bytes) -> None:
        if self._done:
            raise ValueError(f"the upload of {self.name} is over")
        self._pending.write(data)
        self.size += len(data)
        if self._pending.tell() >= self.store.part_size:
            part, self._pending = self._pending, io.BytesIO()
            await self.store.run(self._send_part, part)

    def _send_part(self, part: io.BytesIO) -> None:
        part.seek(0)
        if self._upload_id is None:
            self._upload_id = self._s3("create_multipart_upload")["UploadId"]
        number = len(self._parts) + 1
        out = self._s3("upload_part", PartNumber=number, UploadId=self._upload_id, Body=part)
        self._parts.append({"PartNumber": number, "ETag": out["ETag"]})

    def _complete(self, last: io.BytesIO) -> None:
        if self._upload_id is None:
            last.seek(0)
            self._s3("put_object", Body=last)
            return
        if last.tell():
            self._send_part(last)
        self._s3(
            "complete_multipart_upload",
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    async def commit(self) -> str:
        if self._done:
            raise ValueError(f"the upload of {self.name} is over")
        last, self._pending = self._pending, io.BytesIO()
        try:
            await self.store.run(self._complete, last)
        except BaseException:
            await self.abort()
            raise
        self._done = True
        return self.name

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._pending = io.BytesIO()
        if self._upload_id is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(OSError):
                await self.store.run(
                    functools.partial(self._s3, "abort_multipart_upload", UploadId=self._upload_id)
                )


@attrs.define
class MovedUpload:
    """An image written under a temporary name through fsspec, moved to its own at commit."""

    store: _Store
    name: str
    tmp: str
    file: Any = attrs.field(repr=False)
    size: int = 0
    _pending: bytearray = attrs.field(factory=bytearray)
    _done: bool = False

    async def write(self, data: bytes) -> None:
        if self._done:
            raise ValueError(f"the upload of {self.name} is over")
        self._pending += data
        self.size += len(data)
        if len(self._pending) >= UPLOAD_HOP:
            block, self._pending = self._pending, bytearray()
            await self.store.run(self.file.write, block)

    def _finish(self, block: bytearray) -> None:
        self.file.write(block)
        self.file.close()
        self.store.fs.mv(self.tmp, self.store.path(self.name))

    async def commit(self) -> str:
        if self._done:
            raise ValueError(f"the upload of {self.name} is over")
        block, self._pending = self._pending, bytearray()
        try:
            await self.store.run(self._finish, block)
        except BaseException:
            await self.abort()
            raise
        self._done = True
        return self.name

    def _drop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.store.fs.rm_file(self.tmp)

    async def abort(self) -> None:
        if not self._done:
            self._done = True
            self._pending = bytearray()
            with anyio.CancelScope(shield=True):
                await self.store.run(self._drop)
