"""An image streamed up to object storage as a Saver's sink (`UploadSink`), against moto's S3
server on 127.0.0.1: under its name only once settled and whole (a multipart upload for a big
one); aborted or refused, nothing under any name and no upload left open."""

import pytest

from gemimg_async._head import NotAnImageError
from gemimg_async._objstore import open_store
from gemimg_async._upload_sink import Aborts, UploadSink
from gemimg_async.testing import png
from helpers import big_png

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


def chunks(data: bytes, size: int = 64 * 1024):
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def open_uploads(store) -> list:
    bucket, _ = store.key("x")
    answer = await store.run(lambda: store.fs.call_s3("list_multipart_uploads", Bucket=bucket))
    return answer.get("Uploads", [])


async def test_a_big_image_is_under_its_name_whole_once_settled(s3):
    """A 5.9 MB PNG in 64 KiB writes (two parts): nothing under the name before settle, then
    exactly the bytes written, named from them."""
    store, aborts, data = open_store(s3), Aborts(), big_png()
    sink = UploadSink(store, 64 * MiB, aborts)
    for chunk in chunks(data):
        await sink.write(chunk)
    assert await store.images() == []
    image = await sink.settle(0, "fox", overwrite=True)
    assert image.path is not None
    assert image.path.name == "fox_0.png"
    assert await store.run(store.fs.cat_file, store.path("fox_0.png")) == data
    assert await open_uploads(store) == []


async def test_an_aborted_upload_leaves_nothing(s3):
    """Aborted past its first part: no object under any name, the multipart upload aborted."""
    store, aborts, data = open_store(s3), Aborts(), big_png()
    sink = UploadSink(store, 64 * MiB, aborts)
    for chunk in chunks(data[: 5 * MiB + 1]):
        await sink.write(chunk)
    sink.abort()
    await aborts.drain()
    assert await store.images() == []
    assert await open_uploads(store) == []
    assert sink.salvage() is None


async def test_an_image_cut_short_is_refused_and_leaves_nothing(s3):
    """A PNG without its end: NotAnImageError at settle, and nothing stored."""
    store, aborts, data = open_store(s3), Aborts(), big_png()
    sink = UploadSink(store, 64 * MiB, aborts)
    for chunk in chunks(data[:-100]):
        await sink.write(chunk)
    with pytest.raises(NotAnImageError, match="cut short"):
        await sink.settle(0, "fox", overwrite=True)
    await aborts.drain()
    assert await store.images() == []
    assert await open_uploads(store) == []


async def test_a_name_taken_gets_the_fallback_without_overwrite(s3):
    """Without overwrite, a taken name keeps its image; the new one takes the fallback name."""
    store, aborts = open_store(s3), Aborts()
    for fallback in (None, "3f9c12ab"):
        sink = UploadSink(store, 64 * MiB, aborts)
        await sink.write(png(4, 4))
        await sink.settle(0, "fox", overwrite=False, fallback=fallback)
    assert await store._names() == ["fox_0-3f9c12ab.png", "fox_0.png"]
