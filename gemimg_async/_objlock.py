"""A shard's lock in object storage, where there is no `flock`: one small object, a lease.

A batch takes its shard's lock (`.manifest.K-of-N.lock`) before it sends anything, so two runs
of one shard cannot both pay for its jobs. The object says who holds it and until when::

    {"owner": "4f1c...", "host": "worker-3", "pid": 4121, "expires": 1767225600.0}

It is created only where none is (S3's If-None-Match). One that exists and has expired (its
holder died: a kill -9, a lost machine) is taken over by a write conditional on the ETag read
(If-Match), so of two runs taking over at once exactly one wins. The holder renews it every
`ttl / 3` seconds (`renew`, by the same conditional write: a renewal that finds the object
changed has lost the lock and says so), and removes it when done. Expiry compares the holder's
clock with the taker's: clocks apart by more than `ttl` (60 s by default) defeat it. A lock of a
process gone from this very host (same host name, no such pid) is expired at once.

On fsspec filesystems other than S3 there are no conditional writes but create-exclusive: an
expired lock is removed, then created anew, and a race between two takers is possible there.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

import attrs

from ._exceptions import ConfigurationError
from ._objstore import FsspecStore

__all__ = ["DEFAULT_LOCK_TTL", "LockLostError", "ObjectLock"]

DEFAULT_LOCK_TTL = 60.0
"""Seconds a lock holds without renewal: how long a dead holder keeps its shard."""


class LockLostError(ConfigurationError):
    """The lock was taken over (this run stalled past its TTL): stop writing the shard."""


@attrs.define
class ObjectLock:
    """The lock named `name` in `store`; see the module's docstring."""

    store: FsspecStore
    name: str
    ttl: float = DEFAULT_LOCK_TTL
    owner: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    _etag: str | None = attrs.field(init=False, default=None)

    def _body(self) -> bytes:
        doc = {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "expires": round(time.time() + self.ttl, 3),
        }
        return json.dumps(doc).encode() + b"\n"

    @property
    def held(self) -> bool:
        return self._etag is not None

    def _put(self, **condition: str) -> str:
        """Write the lock object under `condition`; its new ETag. FileExistsError when the
        condition fails (S3 answers 412)."""
        bucket, key = self.store.key(self.name)
        try:
            out = self.store.fs.call_s3(
                "put_object", Bucket=bucket, Key=key, Body=self._body(), **condition
            )
        except OSError as exc:  # s3fs turns 412 into FileExistsError; some versions not
            if isinstance(exc, FileExistsError) or "412" in str(exc) or "ondition" in str(exc):
                raise FileExistsError(str(exc)) from None
            raise
        return str(out["ETag"])

    def _read(self) -> tuple[dict[str, Any], str] | None:
        """The lock object's content and ETag; None when there is none. The ETag is read
        first: a takeover conditional on it fails if the content read is newer."""
        path = self.store.path(self.name)
        self.store.fs.invalidate_cache(path)
        try:
            etag = str(self.store.fs.info(path)["ETag"])
            body = self.store.fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        return (doc if isinstance(doc, dict) else {}), etag

    def _acquire(self) -> None:
        if not self.store.is_s3:
            self._acquire_plain()
            return
        try:
            self._etag = self._put(IfNoneMatch="*")
        except FileExistsError:
            pass
        else:
            return
        found = self._read()
        if found is None:  # released meanwhile: try once more
            self._etag = self._put(IfNoneMatch="*")
            return
        doc, etag = found
        if not _expired(doc):
            raise _held(self, doc)
        try:
            self._etag = self._put(IfMatch=etag)
        except FileExistsError:
            raise _held(self, (self._read() or ({}, ""))[0]) from None

    def _acquire_plain(self) -> None:
        path = self.store.path(self.name)
        if self.store.fs.exists(path):
            try:
                doc = json.loads(self.store.fs.cat_file(path))
            except (ValueError, FileNotFoundError):
                doc = {}
            if not _expired(doc if isinstance(doc, dict) else {}):
                raise _held(self, doc)
            self.store.fs.rm_file(path)
        try:
            with self.store.fs.open(path, "xb") as file:
                file.write(self._body())
        except FileExistsError:
            raise _held(self, {}) from None
        self._etag = "held"

    def _renew(self) -> None:
        if self._etag is None:
            raise LockLostError(f"the lock {self.name} of {self.store.url} is not held")
        if not self.store.is_s3:
            self.store.fs.pipe_file(self.store.path(self.name), self._body())
            return
        try:
            self._etag = self._put(IfMatch=self._etag)
        except FileExistsError:
            self._etag = None
            raise LockLostError(
                f"another run took over {self.name} in {self.store.url} (this one stalled "
                f"past the lock's {self.ttl:g} s): stopping before it writes the shard again"
            ) from None

    def _release(self) -> None:
        if self._etag is not None:
            self._etag = None
            self.store.fs.rm_file(self.store.path(self.name))

    async def acquire(self) -> None:
        """Take the lock; ConfigurationError naming the holder when a live run holds it."""
        await self.store.run(self._acquire)

    async def renew(self) -> None:
        """Extend the lease; LockLostError when another run took it over."""
        await self.store.run(self._renew)

    async def release(self) -> None:
        await self.store.run(self._release)


def _expired(doc: dict[str, Any]) -> bool:
    """Past its time, or held by a process of this host that is gone (a kill -9: its rerun
    need not wait out the TTL)."""
    expires = doc.get("expires")
    if not isinstance(expires, (int, float)) or expires < time.time():
        return True
    pid = doc.get("pid")
    if doc.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def _held(lock: ObjectLock, doc: dict[str, Any]) -> ConfigurationError:
    who = f" (host {doc.get('host')}, pid {doc.get('pid')})" if doc.get("host") else ""
    left = doc.get("expires")
    until = f", for {max(left - time.time(), 0):.0f} s more" if isinstance(left, float) else ""
    return ConfigurationError(
        f"another gemimg-async batch holds {lock.name} in {lock.store.url}{who}{until}: wait "
        "for it, or run another shard"
    )
