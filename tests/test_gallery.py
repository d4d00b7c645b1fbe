"""The gallery page: built from a folder's manifest, thumbnails made once, every value escaped,
nothing loaded from anywhere but the folder. (In a real browser: test_gallery_browser.py.)"""

import base64
import hashlib
import os
import re
import sys
from decimal import Decimal

import pytest

from gemimg_async import GALLERY_NAME, MANIFEST_NAME, ConfigurationError, Cost, ManifestEntry
from gemimg_async._gallery import PILLOW_MISSING, THUMBS, Card, build_gallery, cards_of, render
from gemimg_async.testing import png

pytest.importorskip("PIL", reason="the gallery needs Pillow: pip install 'gemimg-async[gallery]'")

EVIL = '<script>alert("x")</script> & "quotes" \'single\' <img src=x onerror=alert(1)>'


def entry(job_id, status="saved", **fields) -> ManifestEntry:
    return ManifestEntry(id=job_id, status=status, prompt=f"prompt of {job_id}", **fields)


def batch(folder, entries, images=()):
    """A batch folder: a manifest of `entries` and a PNG for each name in `images`."""
    folder.mkdir(exist_ok=True)
    for name in images:
        (folder / name).write_bytes(png(64, 48, (200, 40, 90)))
    (folder / MANIFEST_NAME).write_bytes(b"".join(e.to_line() for e in entries))
    return folder


def test_the_page_shows_every_image_and_every_job_without_one(out):
    """One tile per image, one per job that has none; thumbnails in .thumbs/ as WEBP."""
    entries = [
        entry("a", paths=("a_0.png", "a_1.png"), delivered=("64x48 (1K)", "64x48 (1K)")),
        entry("r", "refused", error="RefusalError: no image"),
        entry("u", "outcome_unknown", error="OutcomeUnknownError: cut short"),
    ]
    page = build_gallery(batch(out, entries, ["a_0.png", "a_1.png"]))
    assert page == out / GALLERY_NAME
    text = page.read_text(encoding="utf-8")
    assert text.count('<article class="card"') == 4
    assert sorted(p.name for p in (out / THUMBS).iterdir()) == ["a_0.png.webp", "a_1.png.webp"]
    assert 'src=".thumbs/a_0.png.webp" width="64" height="48"' in text
    assert 'href="a_1.png"' in text
    assert "image 2 of 2" in text
    assert "RefusalError: no image" in text
    assert 'data-filter="outcome_unknown" aria-pressed="false">outcome unknown <b>1</b>' in text
    assert not [p for p in out.iterdir() if p.suffix == ".part"]


def test_a_sharded_folder_shows_every_shards_jobs(out):
    """The page reads manifest.jsonl and every manifest.K-of-N.jsonl beside it."""
    batch(out, [entry("whole", paths=("whole_0.png",))], ["whole_0.png", "s1_0.png"])
    (out / "manifest.1-of-2.jsonl").write_bytes(entry("s1", paths=("s1_0.png",)).to_line())
    (out / "manifest.2-of-2.jsonl").write_bytes(entry("s2", "failed", error="boom").to_line())
    text = build_gallery(out).read_text(encoding="utf-8")
    assert text.count('<article class="card"') == 3
    assert all(f"prompt of {job}" in text for job in ("whole", "s1", "s2"))


def test_a_folder_of_shard_manifests_alone_has_a_gallery(out):
    """Without manifest.jsonl, shards' manifests are enough."""
    out.mkdir()
    (out / "manifest.1-of-1.jsonl").write_bytes(entry("s", "refused", error="no").to_line())
    assert "prompt of s" in build_gallery(out).read_text(encoding="utf-8")


def test_every_value_from_the_manifest_is_escaped():
    """A prompt, error, id or model with markup comes out as text, in content and attributes."""
    card = Card(id="x", status="failed", prompt=EVIL, error=EVIL, model=EVIL, asked=EVIL)
    page = render([card], title=EVIL)
    assert "<script>alert" not in page
    assert "<img src=x" not in page
    # title and h1; the prompt's attribute, tooltip and text; error, model, asked
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") == 8
    attributes = re.findall(r'data-prompt="([^"]*)"', page)
    assert attributes == [
        (
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quotes&quot; "
            "&#x27;single&#x27; &lt;img src=x onerror=alert(1)&gt;"
        )
    ]
    assert len(re.findall(r"<script>", page)) == 1  # the page's own


def test_the_page_allows_only_its_own_style_and_script():
    """The Content-Security-Policy names the hashes of the inline style and script, and allows
    images from the folder alone: no network, no injected script."""
    page = render([], title="t")
    policy = re.search(r'Content-Security-Policy" content="([^"]+)"', page)[1]
    for tag, directive in (("style", "style-src"), ("script", "script-src")):
        body = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)[1]
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy
    assert "img-src 'self' file:" in policy
    assert "http" not in page.replace("http-equiv", "")


def test_a_cost_is_shown_where_the_manifest_has_one():
    """Per tile: the total, marked estimated or beside its estimate; in the header: the sum,
    and how much was possibly billed without an image."""
    cards = [
        Card(id="a", status="saved", cost=Cost.of(Decimal("0.134"), Decimal("0.1"))),
        Card(id="b", status="saved", cost=Cost.of(Decimal("0.24"))),
        Card(id="c", status="outcome_unknown", cost=Cost.of(Decimal("0.24"))),
    ]
    page = render(cards, title="t")
    assert "<dt>cost</dt><dd>$0.1000 (estimated $0.1340)</dd>" in page
    assert "<dt>cost</dt><dd>$0.2400 (estimated)</dd>" in page
    assert "cost $0.5800, of which $0.2400 possibly billed without an image" in page
    assert "possibly billed" not in render(cards[:2], title="t")
    assert '<span class="cost">' not in render([Card(id="a", status="saved")], title="t")


def test_thumbnails_are_made_once_and_again_for_a_newer_image(out):
    """A second build reuses the thumbnail; an image written since gets a new one."""
    batch(out, [entry("a", paths=("a_0.png",))], ["a_0.png"])
    build_gallery(out)
    thumb = out / THUMBS / "a_0.png.webp"
    later = thumb.stat().st_mtime_ns + 10**9
    os.utime(thumb, ns=(later, later))  # a mark: a thumbnail made again gets the time now
    build_gallery(out)
    assert thumb.stat().st_mtime_ns == later
    os.utime(out / "a_0.png", ns=(later + 10**9, later + 10**9))
    build_gallery(out)
    assert thumb.stat().st_mtime_ns != later


def test_paths_that_leave_the_folder_or_are_missing_get_no_thumbnail(out, tmp_path):
    """A manifest path with a separator or a dot is ignored; a missing or symlinked image is
    shown without a thumbnail; nothing outside the folder is read."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(png())
    entries = [
        entry("a", paths=("../secret.png", ".hidden.png")),
        entry("b", paths=("b_0.png",)),
        entry("c", paths=("c_0.png",)),
    ]
    batch(out, entries)
    (out / "c_0.png").symlink_to(secret)
    text = build_gallery(out).read_text(encoding="utf-8")
    assert "secret" not in text
    assert ".hidden.png" not in text
    assert 'class="thumb none" href="b_0.png">no thumbnail' in text
    assert 'class="thumb none" href="c_0.png">no thumbnail' in text
    assert list((out / THUMBS).iterdir()) == []


def test_a_file_that_is_no_image_gets_no_thumbnail(out):
    """Bytes Pillow cannot read: the tile links the file and shows no thumbnail."""
    batch(out, [entry("a", paths=("a_0.png",))])
    (out / "a_0.png").write_bytes(b"not an image at all")
    assert "no thumbnail" in build_gallery(out).read_text(encoding="utf-8")


def test_no_file_is_written_through_a_symlink(out, tmp_path):
    """A symlink at index.html is replaced, not followed; a symlinked .thumbs is refused."""
    target = tmp_path / "target.html"
    target.write_text("keep")
    batch(out, [entry("a")])
    (out / GALLERY_NAME).symlink_to(target)
    build_gallery(out)
    assert target.read_text() == "keep"
    assert not (out / GALLERY_NAME).is_symlink()
    (out / THUMBS).rmdir()
    (out / THUMBS).symlink_to(tmp_path)
    with pytest.raises(ConfigurationError, match="symlink"):
        build_gallery(out)


def test_a_folder_without_a_manifest_is_a_clear_error(tmp_path):
    """No manifest: FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match=MANIFEST_NAME):
        build_gallery(tmp_path)


def test_without_pillow_the_error_says_what_to_install(out, monkeypatch):
    """Pillow missing: a ConfigurationError that gives the pip command."""
    batch(out, [entry("a")])
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ConfigurationError) as caught:
        build_gallery(out)
    assert str(caught.value) == PILLOW_MISSING
    assert "pip install 'gemimg-async[gallery]'" in PILLOW_MISSING


def test_cards_follow_the_manifest():
    """One card per image in manifest order, with its delivered size; jobs without images keep
    their error."""
    cards = cards_of(
        [
            entry("a", paths=("a_0.png", "a_1.png"), delivered=("1x1 (1K)",)),
            entry("f", "failed", error="BadRequestError: no"),
        ]
    )
    assert [(c.id, c.image, c.delivered, c.index) for c in cards] == [
        ("a", "a_0.png", "1x1 (1K)", 0),
        ("a", "a_1.png", None, 1),
        ("f", None, None, 0),
    ]
    assert cards[2].error == "BadRequestError: no"


def test_cards_show_what_each_job_charged():
    """A card shows its job's cost from the manifest; a failed job shows only a cost the relay
    reported, and nothing when it reported none."""
    cards = cards_of(
        [
            entry("a", cost=Cost.of(Decimal("0.134"), Decimal("0.1"))),
            entry("f", "failed", cost=Cost.of(Decimal("0.134"))),
            entry("r", "refused", cost=Cost.of(Decimal("0.134"), Decimal("0.01"))),
        ]
    )
    assert [card.cost for card in cards] == [
        Cost.of(Decimal("0.134"), Decimal("0.1")),
        None,
        Cost.of(Decimal(0), Decimal("0.01")),
    ]
