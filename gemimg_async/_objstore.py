"""Object storage as a batch's `Store`, through fsspec: `s3://bucket/prefix` (s3fs), or any URL
fsspec knows (the optional extra ``gemimg-async[s3]``).

Images. On S3 an image goes up as it arrives: bytes gather in memory until a part is full
(`part_size`, 5 MiB, S3's least), which is uploaded as one part of a multipart upload while the
next bytes wait; `commit` uploads the last part and completes the upload, and only then does an
object exist under the key. An image smaller than a part is one plain PUT at commit. `abort`
aborts the multipart upload: S3 drops its parts. Nothing completes an upload but `commit`: an
upload dropped without either leaves no object (only parts, which S3 bills until a bucket
lifecycle rule's `AbortIncompleteMultipartUpload` removes them). An upload named only at commit
puts its parts under a temporary key, which S3 copies to the name (`_objupload`). Elsewhere an
image is written under a temporary name (`.gemimg-....part`) and moved to its own at commit.

Logs. Object storage has no append: each `append` is one object, numbered, in a folder named as
the log's file would be (`manifest.2-of-4.jsonl/000000000001.jsonl`, `.../000000000002.jsonl`),
created only where nothing is (S3's If-None-Match), so two writers of one log collide rather than
overwrite each other. `compact` folds them into one object (`000000000001-000000000420.jsonl`)
before it removes them; a reader takes the widest objects that cover each number, so it reads
the same lines before, during and after.

fsspec and s3fs are blocking (they run their own event loop in a thread): each call here runs in
a worker thread, at most `max_threads` of this store's at once, so uploads never take the threads
that the manifest's fsyncs need. A thread hop costs about 150 us: one per part (5 MiB) of an S3
upload, one per MiB elsewhere, one per log append.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import attrs

from ._exceptions import ConfigurationError, InvalidDestinationError
from ._objupload import MovedUpload, S3Upload, temporary_name
from ._outdir import image_key
from ._sinks import TEMP_PREFIX
from ._storage import LocalStore, Store, check_image_name, check_log_name

__all__ = ["DEFAULT_PART_SIZE", "FsspecStore", "LogClashError", "is_object_url", "open_store"]

T = TypeVar("T")

DEFAULT_PART_SIZE = 5 * 1024 * 1024
"""The bytes of one multipart part: S3's least (every part but the last), and what an upload
holds in memory at most, besides one part on its way."""
_MISSING = (
    "object storage needs fsspec (and s3fs for s3://): pip install 'gemimg-async[s3]' ({error})"
)
_PART = re.compile(r"([0-9]{12})(?:-([0-9]{12}))?\.jsonl")
_S3 = frozenset({"s3", "s3a"})


class LogClashError(FileExistsError):
    """Another writer appended to the same log: the shard runs twice."""


def is_object_url(out: str | os.PathLike[str]) -> bool:
    """Whether `out` names object storage (`s3://...`) rather than a folder (`file://` is one)."""
    if not isinstance(out, str):
        return False
    scheme = urlsplit(out).scheme
    return len(scheme) > 1 and scheme != "file"  # a drive letter (C:) is one character


def open_store(out: str | os.PathLike[str], **storage_options: Any) -> Store:
    """The store at `out`: a folder (a path or `file://` URL) or an fsspec URL such as
    `s3://bucket/prefix` (`storage_options` go to the filesystem: `endpoint_url`, keys...)."""
    if is_object_url(out):
        return FsspecStore.open(str(out), **storage_options)
    if storage_options:
        raise ConfigurationError("storage options are for object storage URLs, not a folder")
    text = os.fspath(out)
    return LocalStore(Path(urlsplit(text).path if text.startswith("file://") else text))


@attrs.define(eq=False)
class FsspecStore:
    """A `Store` on an fsspec filesystem: see the module's docstring."""

    fs: Any = attrs.field(repr=False)
    root: str
    """The store's path on `fs`, without the protocol: `bucket/prefix`."""
    url: str
    part_size: int = DEFAULT_PART_SIZE
    max_threads: int = 16
    _threads: anyio.CapacityLimiter = attrs.field(init=False, repr=False)
    _next: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.part_size < DEFAULT_PART_SIZE:
            raise ConfigurationError(f"part_size is at least {DEFAULT_PART_SIZE} bytes (S3's)")
        self._threads = anyio.CapacityLimiter(self.max_threads)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        max_threads: int = 16,
        **storage_options: Any,
    ) -> FsspecStore:
        """The store at `url` (`s3://bucket/prefix`); `storage_options` go to the filesystem
        (`endpoint_url=`, `key=`, `secret=`; by default the usual AWS_* variables)."""
        try:
            import fsspec  # noqa: PLC0415 - an optional extra, loaded only when used

            fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except ImportError as exc:
            raise ConfigurationError(_MISSING.format(error=exc)) from None
        root = str(root).rstrip("/")
        if not root:
            raise ConfigurationError(f"{url} names no bucket or folder: add one, s3://bucket/…")
        return cls(fs, root, url.split("?", 1)[0], part_size, max_threads)

    @property
    def is_s3(self) -> bool:
        protocol = self.fs.protocol
        return bool(_S3.intersection((protocol,) if isinstance(protocol, str) else protocol))

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(call, *args, limiter=self._threads)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    async def check(self) -> None:
        """Write and remove a small object, so that a store that cannot take images is refused
        before anything is paid for: InvalidDestinationError saying why."""
        probe = self.path(f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}.part")
        try:
            await self.run(self.fs.pipe_file, probe, b"probe")
            await self.run(self.fs.rm_file, probe)
        except OSError as exc:
            raise InvalidDestinationError(
                f"cannot write to {self.url} ({type(exc).__name__}: {exc}): check the bucket, "
                "the credentials and the endpoint"
            ) from None

    # --- images ---------------------------------------------------------------------------

    def key(self, name: str) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(self.path(name))
        return bucket, key

    async def open_image(self, name: str | None = None) -> S3Upload | MovedUpload:
        if name is not None:
            check_image_name(name)
        if self.is_s3:
            return S3Upload(self, name)
        tmp = self.path(temporary_name())
        file = await self.run(self.fs.open, tmp, "wb")
        return MovedUpload(self, name, tmp, file)

    async def images(self) -> list[str]:
        return sorted(name for name in await self._names() if image_key(name) is not None)

    async def _names(self, sub: str = "", *, folders: bool = False) -> list[str]:
        """The names directly under the root (or its `sub` folder): files, or `folders`."""
        path = self.path(sub) if sub else self.root

        def listing() -> list[str]:
            self.fs.invalidate_cache(path)
            try:
                entries = self.fs.ls(path, detail=True)
            except FileNotFoundError:
                return []
            wanted = "directory" if folders else "file"
            return [
                e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == wanted
            ]

        return await self.run(listing)

    # --- logs -----------------------------------------------------------------------------

    async def append(self, log: str, data: bytes) -> None:
        if not data.endswith(b"\n"):
            raise ValueError("a log takes whole lines: the data must end with a newline")
        stem = _stem(log)
        if log not in self._next:
            parts = _parts(await self._names(stem))
            self._next[log] = max((last for _, last, _ in parts), default=0) + 1
        number = self._next[log]
        path = self.path(f"{stem}/{number:012d}.jsonl")
        try:
            await self.run(_create, self.fs, path, data)
        except FileExistsError:
            # our own write whose answer was lost, retried, is there already: that is fine
            if await self.run(self.fs.cat_file, path) != data:
                raise LogClashError(
                    f"another writer appended line object {number} of {log} in {self.url}: is this "
                    "shard running twice? Stop one; the manifest keeps both runs' lines"
                ) from None
        self._next[log] = number + 1

    async def read_log(self, log: str) -> bytes:
        stem = _stem(log)
        return await self._read(stem, _covering(_parts(await self._names(stem))))

    async def _read(self, stem: str, names: list[str]) -> bytes:
        if not names:
            return b""
        paths = [self.path(f"{stem}/{name}") for name in names]
        contents = await self.run(self.fs.cat, paths)
        return b"".join(contents[path] for path in paths)

    async def compact(self, log: str) -> int:
        """Fold `log`'s objects into one, then remove them; returns how many were removed. Only
        the log's writer may (it holds the shard), between its appends."""
        stem = _stem(log)
        parts = _parts(await self._names(stem))
        if len(parts) < 2:  # noqa: PLR2004 - one object is compact already
            return 0
        folded = f"{min(p[0] for p in parts):012d}-{max(p[1] for p in parts):012d}.jsonl"
        if folded not in {name for *_, name in parts}:
            data = await self._read(stem, _covering(parts))
            await self.run(_create, self.fs, self.path(f"{stem}/{folded}"), data)
        stale = [self.path(f"{stem}/{name}") for *_, name in parts if name != folded]
        await self.run(self.fs.rm, stale)
        return len(stale)

    async def clear_log(self, log: str) -> None:
        stem = _stem(log)
        names = await self._names(stem)
        if names:
            await self.run(self.fs.rm, [self.path(f"{stem}/{name}") for name in names])

    async def logs(self) -> list[str]:
        folders = await self._names(folders=True)
        return sorted(name for name in folders if _is_log(name))

    async def aclose(self) -> None:
        pass  # the filesystem is fsspec's to keep: its instances are shared and cached


def _stem(log: str) -> str:
    """The folder of `log`'s objects: its own name (`manifest.2-of-4.jsonl/`), so that nothing
    else under the prefix looks like a log."""
    return check_log_name(log)


def _is_log(name: str) -> bool:
    try:
        check_log_name(name)
    except ValueError:
        return False
    return True


def _parts(names: list[str]) -> list[tuple[int, int, str]]:
    """The numbered objects of a log: (first, last, name), ranges included."""
    parts = []
    for name in names:
        match = _PART.fullmatch(name)
        if match is not None:
            first = int(match[1])
            parts.append((first, int(match[2] or first), name))
    return parts


def _covering(parts: list[tuple[int, int, str]]) -> list[str]:
    """The objects to read, in order: the widest that start at each number not yet covered."""
    chosen, covered = [], 0
    for _, last, name in sorted(parts, key=lambda p: (p[0], -p[1])):
        if last > covered:  # a partial overlap (no writer of ours makes one) is read again:
            chosen.append(name)  # a line twice, in order, changes no id's latest line
            covered = last
    return chosen


def _create(fs: Any, path: str, data: bytes) -> None:
    """One object at `path` holding `data`, only where nothing is (FileExistsError)."""
    with fs.open(path, "xb") as file:
        file.write(data)
