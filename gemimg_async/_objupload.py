"""Images on their way up to object storage (`_objstore`'s): a multipart upload on S3, a
temporary object moved into place elsewhere. See `_objstore` for what each guarantees.

An upload's name may be given when it opens, or only at `commit` (a batch learns an image's
extension, and in some dialects which image is final, only at its end). On S3 the parts of an
upload opened without a name go up under a temporary key (`.gemimg-....part`), copied to the
name by S3 itself at commit, then removed; an image smaller than a part is one PUT under its
name either way."""

from __future__ import annotations

import contextlib
import io
import uuid
from typing import Any, Protocol

import anyio
import attrs

from ._sinks import TEMP_PREFIX
from ._storage import UPLOAD_HOP, check_image_name

__all__ = ["MovedUpload", "S3Upload", "temporary_name"]


class _Store(Protocol):
    """What an upload needs of its store."""

    @property
    def fs(self) -> Any: ...
    @property
    def part_size(self) -> int: ...
    def path(self, name: str) -> str: ...
    def key(self, name: str) -> tuple[str, str]:
        """The bucket and key of `name`."""

    async def run(self, call: Any, *args: Any) -> Any: ...


def temporary_name() -> str:
    return f"{TEMP_PREFIX}{uuid.uuid4().hex}.part"


def _final(upload: S3Upload | MovedUpload, name: str | None) -> str:
    if upload.done:
        raise ValueError(f"the upload of {upload.name or 'an image'} is over")
    final = name or upload.name
    if final is None:
        raise ValueError("an upload opened without a name takes one at commit")
    return check_image_name(final)


@attrs.define
class S3Upload:
    """An image going up to S3: one multipart part per `part_size`, completed at commit."""

    store: _Store
    name: str | None
    size: int = 0
    done: bool = False
    _pending: io.BytesIO = attrs.field(factory=io.BytesIO)
    """The part being gathered: handed to botocore as it is (a stream: aiohttp sends raw bytes
    from the loop in one piece, and warns), never copied."""
    _key: str | None = None
    """Where the parts go: the name's key, or a temporary one when the name is not known yet."""
    _upload_id: str | None = None
    _parts: list[dict[str, Any]] = attrs.field(factory=list)

    def _s3(self, method: str, key: str, **kwargs: Any) -> Any:
        bucket, key = self.store.key(key)
        return self.store.fs.call_s3(method, Bucket=bucket, Key=key, **kwargs)

    async def write(self, data: bytes) -> None:
        if self.done:
            raise ValueError(f"the upload of {self.name or 'an image'} is over")
        self._pending.write(data)
        self.size += len(data)
        if self._pending.tell() >= self.store.part_size:
            part, self._pending = self._pending, io.BytesIO()
            await self.store.run(self._send_part, part)

    def _send_part(self, part: io.BytesIO) -> None:
        part.seek(0)
        if self._upload_id is None:
            self._key = self.name or temporary_name()
            self._upload_id = self._s3("create_multipart_upload", self._key)["UploadId"]
        assert self._key is not None
        number = len(self._parts) + 1
        out = self._s3(
            "upload_part", self._key, PartNumber=number, UploadId=self._upload_id, Body=part
        )
        self._parts.append({"PartNumber": number, "ETag": out["ETag"]})

    def _complete(self, last: io.BytesIO, final: str) -> None:
        if self._upload_id is None:
            last.seek(0)
            self._s3("put_object", final, Body=last)
            return
        if last.tell():
            self._send_part(last)
        assert self._key is not None
        self._s3(
            "complete_multipart_upload",
            self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        self._upload_id = None  # complete: nothing left to abort
        if self._key != final:
            self.store.fs.copy(self.store.path(self._key), self.store.path(final))
            self._drop_temporary()

    def _drop_temporary(self) -> None:
        if self._key is not None and self._key != self.name:
            with contextlib.suppress(OSError):
                self.store.fs.rm_file(self.store.path(self._key))
            self._key = None

    async def commit(self, name: str | None = None) -> str:
        final = _final(self, name)
        last, self._pending = self._pending, io.BytesIO()
        try:
            await self.store.run(self._complete, last, final)
        except BaseException:
            await self.abort()
            raise
        self.done = True
        return final

    def _abort(self) -> None:
        if self._upload_id is not None:
            assert self._key is not None
            with contextlib.suppress(OSError):
                self._s3("abort_multipart_upload", self._key, UploadId=self._upload_id)
            self._upload_id = None
        elif self._key is not None:  # completed under a temporary key, not copied
            self._drop_temporary()

    async def abort(self) -> None:
        if not self.done:
            self.done = True
            self._pending = io.BytesIO()
            with anyio.CancelScope(shield=True):
                await self.store.run(self._abort)


@attrs.define
class MovedUpload:
    """An image written under a temporary name through fsspec, moved to its own at commit."""

    store: _Store
    name: str | None
    tmp: str
    file: Any = attrs.field(repr=False)
    size: int = 0
    done: bool = False
    _pending: bytearray = attrs.field(factory=bytearray)

    async def write(self, data: bytes) -> None:
        if self.done:
            raise ValueError(f"the upload of {self.name or 'an image'} is over")
        self._pending += data
        self.size += len(data)
        if len(self._pending) >= UPLOAD_HOP:
            block, self._pending = self._pending, bytearray()
            await self.store.run(self.file.write, block)

    def _finish(self, block: bytearray, final: str) -> None:
        self.file.write(block)
        self.file.close()
        self.store.fs.mv(self.tmp, self.store.path(final))

    async def commit(self, name: str | None = None) -> str:
        final = _final(self, name)
        block, self._pending = self._pending, bytearray()
        try:
            await self.store.run(self._finish, block, final)
        except BaseException:
            await self.abort()
            raise
        self.done = True
        return final

    def _drop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.store.fs.rm_file(self.tmp)

    async def abort(self) -> None:
        if not self.done:
            self.done = True
            self._pending = bytearray()
            with anyio.CancelScope(shield=True):
                await self.store.run(self._drop)
