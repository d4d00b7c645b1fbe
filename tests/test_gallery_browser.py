"""The gallery page in a real headless Chromium: a batch made by the fake relay and the public
`run_batch`, its page loaded from file://, thumbnails, status filter, search and links checked.

Skipped, saying how to install it, where Chromium is not on PATH. `GEMIMG_SCREENSHOT=1` also
writes the screenshot to docs/gallery.png (the README shows it).
"""

import os
from pathlib import Path

import anyio
import pytest

import gemimg_async as gi
from browser import INSTALL_HINT, chromium, open_page
from gemimg_async.testing import FakeClock, FakeRelay, Fault
from helpers import API_KEY, TIER_2K

pytest.importorskip("PIL", reason="the gallery needs Pillow: pip install 'gemimg-async[gallery]'")
from gemimg_async._gallery import build_gallery

DOCS = Path(__file__).parent.parent / "docs"
SAVED = [
    gi.ImageRequest("a lighthouse at dawn, long exposure", id="lighthouse", size="16:9"),
    gi.ImageRequest("一只在雪中的红狐狸", id="fox"),
    gi.ImageRequest("a bowl of ramen, top-down, studio light", id="ramen", size="4:3"),
    gi.ImageRequest("isometric city block at night, neon", id="city", model=TIER_2K, n=2),
    gi.ImageRequest("a watercolour map of an island", id="island", size="3:4"),
]
FAILING = [
    (
        gi.ImageRequest("<script>window.pwned = 1</script> a refused prompt", id="refused"),
        Fault.refusal(),
    ),
    (
        gi.ImageRequest('<img src=x onerror="window.pwned = 1"> too short', id="failed"),
        Fault.status(400, message="the prompt is too short"),
    ),
    (gi.ImageRequest("a harbour at night, fog", id="lost"), Fault.truncate()),
]
IMAGES = sum(request.n for request in SAVED)


@pytest.fixture
def executable() -> str:
    found = chromium()
    if found is None:
        pytest.skip(INSTALL_HINT)
    return found


async def make_batch(relay: FakeRelay, out: Path) -> None:
    relay.script(*[Fault.delay(0) for _ in SAVED], *[fault for _, fault in FAILING])
    jobs = [*SAVED, *[request for request, _ in FAILING]]
    retry = gi.RetryPolicy.never()
    async with gi.Client(
        API_KEY, relay.url, max_concurrency=1, retry=retry, clock=FakeClock()
    ) as c:
        summary = await gi.run_batch(c, jobs, out)
    assert (summary.saved, summary.refused, summary.failed, summary.outcome_unknown) == (5, 1, 1, 1)


VISIBLE = "[...document.querySelectorAll('.card')].filter((c) => !c.hidden)"
LOADED = (
    "Promise.all([...document.images].map((i) => i.complete ? 0 :"
    " new Promise((r) => { i.onload = i.onerror = r; })))"
    ".then(() => [...document.images].map((i) => i.naturalWidth))"
)


@pytest.mark.anyio
async def test_the_gallery_works_in_a_real_browser(relay, out, tmp_path, executable):
    """Every thumbnail loads from file://, the status filter and the prompt search narrow the
    grid, a thumbnail opens its image, and no prompt's markup runs."""
    await make_batch(relay, out)
    page_path = await anyio.to_thread.run_sync(build_gallery, out)
    with anyio.fail_after(90):
        async with open_page(executable, tmp_path / "profile") as page:
            await page.goto(page_path.as_uri())
            widths = await page.evaluate(LOADED)
            assert len(widths) == IMAGES
            assert all(width > 0 for width in widths)
            shot = await page.screenshot()
            assert shot.startswith(b"\x89PNG")
            await anyio.Path(tmp_path / "gallery.png").write_bytes(shot)
            if os.environ.get("GEMIMG_SCREENSHOT"):
                await anyio.Path(DOCS / "gallery.png").write_bytes(shot)

            await page.click("[data-filter=refused]")
            assert await page.evaluate(f"{VISIBLE}.map((c) => c.dataset.status)") == ["refused"]
            assert await page.evaluate("document.getElementById('shown').textContent") == "1"
            await page.click("[data-filter=saved]")
            assert await page.evaluate(f"{VISIBLE}.length") == IMAGES
            await page.click("[data-filter=all]")
            assert await page.evaluate(f"{VISIBLE}.length") == IMAGES + len(FAILING)

            await page.type("#search", "LIGHTHOUSE")
            assert await page.evaluate(f"{VISIBLE}.map((c) => c.dataset.prompt)") == [
                SAVED[0].prompt
            ]
            await page.type("#search", "狐狸")
            assert await page.evaluate(f"{VISIBLE}.length") == 1
            await page.type("#search", "night")
            assert await page.evaluate(f"{VISIBLE}.length") == 3  # two city images, one lost
            await page.click("[data-filter=outcome_unknown]")
            assert await page.evaluate(f"{VISIBLE}.map((c) => c.dataset.status)") == [
                "outcome_unknown"
            ]

            text = await page.evaluate("document.querySelector('main').textContent")
            assert "<script>window.pwned = 1</script>" in text
            assert "RefusalError" in text
            assert "$0.1340 (estimated)" in text  # each job's cost, from its manifest line
            header = await page.evaluate("document.querySelector('header').textContent")
            assert "cost $0.9380, of which $0.1340 possibly billed without an image" in header
            assert await page.evaluate("typeof window.pwned") == "undefined"
            assert page.errors() == []

            await page.click("[data-filter=all]")
            await page.type("#search", "")
            opened = page.tools.expect("Page.loadEventFired")
            await page.click("a.thumb")
            await opened
            assert await page.evaluate("document.contentType") == "image/png"
            assert await page.evaluate("location.href") == (out / "lighthouse_0.png").as_uri()
