"""Stores: a folder (`LocalStore`) and object storage (`FsspecStore`, against moto's S3 server on
127.0.0.1) keep one contract: an image under its name only once committed and whole, nothing
after an abort, logs read back in order. On S3: multipart uploads in bounded memory, off the
event loop; numbered log objects that two writers cannot overwrite, folded without a line lost."""

import gc
import os
import threading
import tracemalloc
from pathlib import Path

import anyio
import pytest

from gemimg_async import ConfigurationError, InvalidDestinationError
from gemimg_async._objstore import is_object_url, open_store
from gemimg_async._storage import LocalStore

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


def chunks(data: bytes, size: int = 64 * 1024):
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture(params=["folder", "s3"])
def store_url(request, tmp_path):
    """Each contract test runs on a folder and on S3."""
    if request.param == "folder":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3")


@pytest.fixture
async def store(store_url):
    opened = open_store(store_url)
    yield opened
    await opened.aclose()


def s3fs_of(url: str):
    import s3fs  # noqa: PLC0415 - only where the s3 fixture ran

    return s3fs.S3FileSystem(), url.removeprefix("s3://")


def pending_uploads(url: str) -> list:
    fs, root = s3fs_of(url)
    return fs.call_s3("list_multipart_uploads", Bucket=root.split("/")[0]).get("Uploads", [])


# --- the contract, on both -----------------------------------------------------------------------


async def test_a_committed_image_is_whole_under_its_name(store):
    """Bytes written in chunks come back whole under the name, once committed."""
    data = os.urandom(3 * MiB + 17)
    upload = await store.open_image("cat_0.png")
    for chunk in chunks(data):
        await upload.write(chunk)
    assert upload.size == len(data)
    assert await upload.commit() == "cat_0.png"
    assert await store.images() == ["cat_0.png"]
    assert await read_image(store, "cat_0.png") == data


async def test_nothing_is_under_the_name_before_commit_or_after_abort(store):
    """A half-written image is under no name; aborted, it leaves nothing behind."""
    upload = await store.open_image("dog_0.png")
    for chunk in chunks(os.urandom(2 * MiB)):
        await upload.write(chunk)
    assert await store.images() == []
    await upload.abort()
    await upload.abort()  # twice is fine
    assert await store.images() == []
    assert await listing(store) == []


async def test_a_commit_replaces_the_image_there(store):
    """Committing over an existing image replaces it whole."""
    for data in (b"first", b"second"):
        upload = await store.open_image("cat_0.png")
        await upload.write(data)
        await upload.commit()
    assert await read_image(store, "cat_0.png") == b"second"


@pytest.mark.parametrize("size", [1000, 12 * MiB])
async def test_an_image_named_only_at_commit(store, size):
    """An upload opened without a name takes it at commit (small, or in parts on S3), leaving
    no temporary file or object behind; without a name at all, commit refuses."""
    data = os.urandom(size)
    upload = await store.open_image()
    for chunk in chunks(data):
        await upload.write(chunk)
    assert await store.images() == []
    assert await upload.commit("late_0.png") == "late_0.png"
    assert await read_image(store, "late_0.png") == data
    assert await listing(store) == ["late_0.png"]
    nameless = await store.open_image()
    await nameless.write(b"x")
    with pytest.raises(ValueError, match="takes one at commit"):
        await nameless.commit()
    await nameless.abort()
    assert await listing(store) == ["late_0.png"]


async def test_an_upload_is_used_once(store):
    """After commit or abort an upload takes no more bytes and cannot commit again."""
    upload = await store.open_image("cat_0.png")
    await upload.write(b"x")
    await upload.commit()
    with pytest.raises(ValueError, match="over"):
        await upload.write(b"y")
    with pytest.raises(ValueError, match="over"):
        await upload.commit()


async def test_image_names_have_no_folder(store):
    """An image name with a folder, or a hidden one, is refused."""
    for name in ("a/b_0.png", "", ".x_0.png"):
        with pytest.raises(ValueError, match="no folder"):
            await store.open_image(name)


async def test_logs_read_back_in_order(store):
    """Lines appended come back in order; logs lists the logs; clear empties one."""
    await store.append("manifest.2-of-4.jsonl", b'{"id": "a"}\n')
    await store.append("manifest.2-of-4.jsonl", b'{"id": "b"}\n{"id": "c"}\n')
    await store.append(".manifest-sent.2-of-4.jsonl", b'{"id": "d"}\n')
    assert await store.read_log("manifest.2-of-4.jsonl") == (
        b'{"id": "a"}\n{"id": "b"}\n{"id": "c"}\n'
    )
    assert await store.logs() == [".manifest-sent.2-of-4.jsonl", "manifest.2-of-4.jsonl"]
    await store.clear_log(".manifest-sent.2-of-4.jsonl")
    assert await store.read_log(".manifest-sent.2-of-4.jsonl") == b""
    assert await store.read_log("manifest.1-of-4.jsonl") == b""
    assert await store.images() == []


async def test_check_accepts_a_store_that_takes_files(store):
    """A store that takes files passes `check`, which leaves nothing behind."""
    await store.check()
    assert await listing(store) == []


async def test_logs_take_whole_lines_under_plain_names(store):
    """A log takes data ending in a newline, under a plain `.jsonl` name."""
    with pytest.raises(ValueError, match="whole lines"):
        await store.append("manifest.jsonl", b'{"id": "a"}')
    for name in ("../manifest.jsonl", "a/manifest.jsonl", "manifest.txt"):
        with pytest.raises(ValueError, match="named like"):
            await store.append(name, b"{}\n")


async def read_image(store, name: str) -> bytes:
    if isinstance(store, LocalStore):
        return (store.folder / name).read_bytes()
    return await anyio.to_thread.run_sync(store.fs.cat_file, f"{store.root}/{name}")


async def listing(store) -> list[str]:
    """Everything under the store's root, temporary files and pending uploads included."""
    if isinstance(store, LocalStore):
        return sorted(p.name for p in store.folder.iterdir()) if store.folder.exists() else []
    names = await store._names() + await store._names(folders=True)
    uploads = pending_uploads(store.url)
    return sorted(names) + [u["Key"] for u in uploads]


# --- which store ---------------------------------------------------------------------------


def test_open_store_tells_folders_from_object_storage(tmp_path):
    """A path or file:// URL is a folder; s3:// is object storage; options are for the latter."""
    assert open_store(tmp_path) == LocalStore(tmp_path)
    assert open_store(f"file://{tmp_path}") == LocalStore(tmp_path)
    assert is_object_url("s3://bucket/prefix")
    assert not is_object_url("C:/out")
    assert not is_object_url(tmp_path)
    with pytest.raises(ConfigurationError, match="object storage"):
        open_store(tmp_path, key="x")


def test_an_object_url_needs_a_bucket(s3):
    """s3:// alone names no bucket: a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="no bucket"):
        open_store("s3://")


async def test_check_refuses_a_missing_bucket_before_paying(s3):
    """A bucket that does not exist is an InvalidDestinationError from `check`."""
    await open_store(s3).check()
    with pytest.raises(InvalidDestinationError, match="cannot write to s3://no-such-bucket-9f"):
        await open_store("s3://no-such-bucket-9f/out").check()


# --- S3: uploads ---------------------------------------------------------------------------


async def test_a_large_image_goes_up_in_parts_and_appears_only_at_commit(s3):
    """12 MiB in 64 KiB chunks: a multipart upload under way, no object, until commit."""
    store = open_store(s3)
    data = os.urandom(12 * MiB)
    upload = await store.open_image("big_0.png")
    for chunk in chunks(data):
        await upload.write(chunk)
    assert len(upload._parts) == 2  # two full parts up, the rest waits for commit
    assert [u["Key"] for u in pending_uploads(s3)] == ["out/big_0.png"]
    assert await store.images() == []
    await upload.commit()
    assert await read_image(store, "big_0.png") == data
    assert pending_uploads(s3) == []


async def test_an_unnamed_image_aborted_after_its_parts_leaves_nothing(s3):
    """Parts gone up under a temporary key, then abort: no object, no pending upload."""
    store = open_store(s3)
    upload = await store.open_image()
    for chunk in chunks(os.urandom(11 * MiB)):
        await upload.write(chunk)
    assert [u["Key"].split("/")[-1][:8] for u in pending_uploads(s3)] == [".gemimg-"]
    await upload.abort()
    assert await listing(store) == []


async def test_an_aborted_multipart_upload_leaves_no_parts(s3):
    """Abort after parts went up: no object, and S3 holds no pending upload either."""
    store = open_store(s3)
    upload = await store.open_image("big_0.png")
    for chunk in chunks(os.urandom(11 * MiB)):
        await upload.write(chunk)
    assert len(pending_uploads(s3)) == 1
    await upload.abort()
    assert pending_uploads(s3) == []
    assert await listing(store) == []


async def test_a_cancelled_upload_aborted_in_a_cancelled_scope_still_aborts(s3):
    """An abort called from a cancelled scope (a batch stopping) still aborts on S3."""
    store = open_store(s3)
    upload = await store.open_image("big_0.png")
    for chunk in chunks(os.urandom(6 * MiB)):
        await upload.write(chunk)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await upload.abort()
    assert pending_uploads(s3) == []


async def test_a_failed_completion_aborts_and_raises(s3):
    """When S3 refuses the completion (a part it does not have) the error comes out, and
    neither an object nor the upload's parts are left."""
    store = open_store(s3)
    upload = await store.open_image("big_0.png")
    for chunk in chunks(os.urandom(6 * MiB)):
        await upload.write(chunk)
    upload._parts[0]["ETag"] = '"0123456789abcdef0123456789abcdef"'  # S3 finds no such part
    with pytest.raises(OSError, match="part"):
        await upload.commit()
    assert await store.images() == []
    assert pending_uploads(s3) == []


def test_why_not_s3fs_files_a_with_block_that_fails_commits_a_partial_object(s3):
    """s3fs's own file completes its upload on close, and a `with` block closes it on an error
    too: a partial image would sit under the final key. `discard()` aborts the parts, but
    `__del__` closes (commits) any file left open. Hence uploads of our own (`S3Upload`), where
    nothing but `commit` completes one. (If s3fs changes this, this test says so.)"""
    fs, root = s3fs_of(s3)

    def write_then_fail() -> None:
        with fs.open(f"{root}/partial_0.png", "wb") as file:
            file.write(os.urandom(6 * MiB))  # one part up
            raise RuntimeError("the relay's answer broke off")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert fs.info(f"{root}/partial_0.png")["size"] == 6 * MiB  # the partial image, in place
    discarded = fs.open(f"{root}/dropped_0.png", "wb")
    discarded.write(os.urandom(6 * MiB))
    assert not fs.exists(f"{root}/dropped_0.png")  # nothing before completion
    discarded.discard()
    discarded.closed = True  # else its __del__ would try to complete it
    assert pending_uploads(s3) == []
    assert not fs.exists(f"{root}/dropped_0.png")


async def test_a_small_image_is_one_put(s3):
    """An image smaller than a part never starts a multipart upload."""
    store = open_store(s3)
    upload = await store.open_image("small_0.png")
    await upload.write(b"\x89PNG" + bytes(1000))
    assert upload._upload_id is None
    await upload.commit()
    assert await read_image(store, "small_0.png") == b"\x89PNG" + bytes(1000)


async def test_a_40mb_image_goes_up_in_bounded_memory_off_the_loop(s3):
    """40 MB in 64 KiB chunks: the client's extra memory peaks far below the image (a part or
    two), and every S3 call runs in a worker thread, never on the event loop."""
    store = open_store(s3)
    size = 40 * 1000 * 1000
    chunk = os.urandom(64 * 1024)  # one chunk sent again and again: the source costs nothing
    calls: list[int] = []
    call_s3 = store.fs.call_s3
    store.fs.call_s3 = lambda *a, **k: (calls.append(threading.get_ident()), call_s3(*a, **k))[1]
    loop_thread = threading.get_ident()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        upload = await store.open_image("huge_0.png")
        for _ in range(size // len(chunk)):
            await upload.write(chunk)
        await upload.commit()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        del store.fs.call_s3
    assert upload.size == size // len(chunk) * len(chunk)
    print(f"peak {peak / MiB:.1f} MiB")  # noqa: T201 - the figure, with -s
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert calls
    assert loop_thread not in calls
    info = await anyio.to_thread.run_sync(store.fs.info, f"{store.root}/huge_0.png")
    assert info["size"] == upload.size


# --- S3: logs ------------------------------------------------------------------------------


async def test_each_append_is_one_numbered_object(s3):
    """Appends are objects 1, 2, 3... under the log's name; a new writer goes on after them."""
    store = open_store(s3)
    for line in (b"1\n", b"2\n"):
        await store.append("manifest.1-of-2.jsonl", line)
    later = open_store(s3)  # a run started after the first
    await later.append("manifest.1-of-2.jsonl", b"3\n")
    assert await store._names("manifest.1-of-2.jsonl") == [
        "000000000001.jsonl",
        "000000000002.jsonl",
        "000000000003.jsonl",
    ]
    assert await store.read_log("manifest.1-of-2.jsonl") == b"1\n2\n3\n"


async def test_two_writers_of_one_log_collide_rather_than_overwrite(s3):
    """A writer that appends where another already has gets LogClashError; no line is lost."""
    from gemimg_async._objstore import LogClashError  # noqa: PLC0415

    first, second = open_store(s3), open_store(s3)
    await first.append("manifest.jsonl", b"a\n")
    await second.append("manifest.jsonl", b"b\n")  # it sees object 1, writes 2
    with pytest.raises(LogClashError, match="running twice"):
        await first.append("manifest.jsonl", b"c\n")  # its own count says 2 too
    assert await first.read_log("manifest.jsonl") == b"a\nb\n"


async def test_an_append_found_already_there_with_its_own_line_is_fine(s3):
    """An append whose object is there with the same line (its answer lost, then retried) is
    not a clash; the next one goes on after it."""
    store = open_store(s3)
    fs, root = s3fs_of(s3)
    await store.append("manifest.jsonl", b"a\n")
    fs.pipe_file(f"{root}/manifest.jsonl/000000000002.jsonl", b"b\n")  # as if PUT, answer lost
    await store.append("manifest.jsonl", b"b\n")
    await store.append("manifest.jsonl", b"c\n")
    assert await store.read_log("manifest.jsonl") == b"a\nb\nc\n"


async def test_compaction_folds_objects_without_losing_or_reordering_a_line(s3):
    """Folding reads the same lines before, midway (folded object written, parts not yet
    removed) and after; appends go on after it."""
    store = open_store(s3)
    lines = [f'{{"id": "{i}"}}\n'.encode() for i in range(7)]
    for line in lines:
        await store.append("manifest.jsonl", line)
    expected = b"".join(lines)
    fs, root = s3fs_of(s3)
    fs.pipe_file(f"{root}/manifest.jsonl/000000000001-000000000007.jsonl", expected)  # midway
    assert await store.read_log("manifest.jsonl") == expected
    assert await store.compact("manifest.jsonl") == 7
    assert await store._names("manifest.jsonl") == ["000000000001-000000000007.jsonl"]
    assert await store.read_log("manifest.jsonl") == expected
    await store.append("manifest.jsonl", b'{"id": "7"}\n')
    assert await store.compact("manifest.jsonl") == 2
    assert await store.read_log("manifest.jsonl") == expected + b'{"id": "7"}\n'
    assert await store.compact("manifest.jsonl") == 0


async def test_logs_and_images_share_a_prefix_without_mixing(s3):
    """Images, logs and a stray object under one prefix are each listed where they belong."""
    store = open_store(s3)
    await store.append("manifest.1-of-2.jsonl", b"{}\n")
    upload = await store.open_image("a_0.png")
    await upload.write(b"x")
    await upload.commit()
    fs, root = s3fs_of(s3)
    fs.pipe_file(f"{root}/notes.txt", b"hello")
    fs.pipe_file(f"{root}/sub/a_1.png", b"x")
    assert await store.images() == ["a_0.png"]
    assert await store.logs() == ["manifest.1-of-2.jsonl"]


async def test_a_folder_store_keeps_logs_as_plain_files(tmp_path):
    """A folder's log is one append-only file, the manifest a batch writes itself."""
    store = LocalStore(tmp_path)
    await store.append("manifest.jsonl", b"{}\n")
    assert (tmp_path / "manifest.jsonl").read_bytes() == b"{}\n"
    assert Path(store.url) == tmp_path
