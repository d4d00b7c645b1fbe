"""A shard's lock in object storage (moto's S3 on 127.0.0.1): one holder at a time, refused with
who holds it, taken over once expired by exactly one of two takers, a renewal that notices it
lost the lock, and gone once released."""

import json

import anyio
import pytest

from gemimg_async import ConfigurationError
from gemimg_async._objlock import LockLostError, ObjectLock
from gemimg_async._objstore import open_store
from gemimg_async._shards import Shard

pytestmark = pytest.mark.anyio

NAME = Shard(2, 4).lock_name


def expire(store, name=NAME):
    """Make the lock object there look like a dead holder's."""
    path = store.path(name)
    doc = json.loads(store.fs.cat_file(path))
    doc["expires"] = 1.0
    store.fs.pipe_file(path, json.dumps(doc).encode())


async def test_one_holder_at_a_time(s3):
    """A second run is refused, told who holds the shard; after release it takes it."""
    store = open_store(s3)
    first, second = ObjectLock(store, NAME), ObjectLock(store, NAME)
    await first.acquire()
    assert first.held
    with pytest.raises(ConfigurationError, match=r"holds \.manifest\.2-of-4\.lock .* \(host "):
        await second.acquire()
    assert not second.held
    await first.release()
    assert not await anyio.to_thread.run_sync(store.fs.exists, store.path(NAME))
    await second.acquire()
    assert second.held


async def test_an_expired_lock_is_taken_over(s3):
    """A dead holder's lock (expired) is taken over; the dead holder's renewal then fails."""
    store = open_store(s3)
    dead, alive = ObjectLock(store, NAME), ObjectLock(store, NAME)
    await dead.acquire()
    await anyio.to_thread.run_sync(expire, store)
    await alive.acquire()
    assert json.loads(store.fs.cat_file(store.path(NAME)))["owner"] == alive.owner
    with pytest.raises(LockLostError, match="took over"):
        await dead.renew()
    await alive.renew()


async def test_of_two_takers_of_an_expired_lock_one_wins(s3):
    """Two runs taking over the same expired lock at once: exactly one holds it."""
    store = open_store(s3)
    await ObjectLock(store, NAME).acquire()
    await anyio.to_thread.run_sync(expire, store)
    takers = [ObjectLock(store, NAME) for _ in range(2)]
    found = takers[0]._read()
    assert found is not None
    etag = found[1]
    takers[0]._etag = takers[0]._put(IfMatch=etag)  # the first takes it over with the ETag read
    with pytest.raises(FileExistsError):
        takers[1]._put(IfMatch=etag)  # the second, with the same ETag, cannot


async def test_renewal_extends_the_lease(s3):
    """A renewal moves the expiry on and keeps the lock held."""
    store = open_store(s3)
    lock = ObjectLock(store, NAME, ttl=30)
    await lock.acquire()
    before = json.loads(store.fs.cat_file(store.path(NAME)))["expires"]
    await anyio.sleep(0.01)
    await lock.renew()
    assert json.loads(store.fs.cat_file(store.path(NAME)))["expires"] > before
    assert lock.held


async def test_locks_of_different_shards_are_apart(s3):
    """Each shard's lock is its own: all N can be held at once."""
    store = open_store(s3)
    locks = [ObjectLock(store, Shard(k, 3).lock_name) for k in (1, 2, 3)]
    for lock in locks:
        await lock.acquire()
    assert all(lock.held for lock in locks)
