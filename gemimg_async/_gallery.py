"""A batch folder's gallery: `OUT/index.html`, a grid of thumbnails and what made each image.

Thumbnails are made once, with Pillow (the `gallery` extra), into `OUT/.thumbs/`; the page is
plain HTML and CSS with a few lines of JavaScript (filter by status, search the prompts), loads
nothing from the network (its Content-Security-Policy forbids it) and works from `file://`. Every
value from the manifest is HTML-escaped: prompts are user text.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import html
import io
import os
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from ._exceptions import ConfigurationError
from ._gallery_page import PAGE, SCRIPT, STYLE
from ._ledger import charged
from ._manifest import MANIFEST_NAME, STATUSES, ManifestEntry, Status, read_manifest
from ._prices import Cost, money
from ._shards import MANIFEST_PATTERN

__all__ = [
    "GALLERY_NAME",
    "PILLOW_MISSING",
    "THUMBS",
    "Card",
    "build_gallery",
    "cards_of",
    "make_thumbnail",
    "render",
    "require_pillow",
]

GALLERY_NAME = "index.html"
THUMBS = ".thumbs"
THUMB_SIDE = 320
"""The longest side of a thumbnail, in pixels."""
PILLOW_MISSING = (
    "the gallery makes its thumbnails with Pillow, which is not installed: "
    "pip install 'gemimg-async[gallery]'"
)
_TEMP_PREFIX = ".gemimg-"


@attrs.frozen(kw_only=True)
class Thumb:
    """A thumbnail: its path relative to the folder, and its pixel size."""

    name: str
    width: int
    height: int


@attrs.frozen(kw_only=True)
class Card:
    """One tile of the gallery: an image of a job (or a job with none), and what made it."""

    id: str
    status: Status
    prompt: str = ""
    model: str | None = None
    asked: str | None = None
    delivered: str | None = None
    """This image's size as delivered (`1376x768 (1K, smaller)`)."""
    downgraded: bool = False
    error: str | None = None
    image: str | None = None
    """The full image, relative to the folder; None for a job without images."""
    index: int = 0
    images: int = 0
    """How many images the job made."""
    thumb: Thumb | None = None
    cost: Cost | None = None
    """The job's cost, where the manifest records one."""

    @classmethod
    def from_entry(cls, entry: ManifestEntry, cost: Cost | None = None) -> list[Card]:
        """The cards of one manifest entry: one per image, or one for a job without images."""
        base = cls(
            id=entry.id,
            status=entry.status,
            prompt=entry.prompt or "",
            model=entry.model,
            asked=entry.asked,
            downgraded=entry.downgraded,
            error=entry.error,
            images=len(entry.paths),
            cost=cost,
        )
        names = [name for name in entry.paths if _plain_name(name)]
        if not names:
            return [base]
        delivered = [*entry.delivered, *[None] * len(names)]
        return [
            attrs.evolve(base, image=name, index=i, delivered=delivered[i])
            for i, name in enumerate(names)
        ]


def _plain_name(name: str) -> bool:
    """A file name inside the folder: no separator, not hidden, no way out."""
    return bool(name) and Path(name).name == name and not name.startswith(".") and "\\" not in name


def cards_of(entries: Iterable[ManifestEntry]) -> list[Card]:
    """Every entry's cards, in manifest order, each with what its job charged (a refused or
    failed job only what the relay reported)."""
    return [card for entry in entries for card in Card.from_entry(entry, _charged(entry))]


def _charged(entry: ManifestEntry) -> Cost | None:
    if entry.cost is None:
        return None
    cost = charged(entry.status, entry.cost)
    return cost if cost.estimated or cost.reported is not None else None


def require_pillow() -> None:
    """ConfigurationError, saying how to install it, unless Pillow can be imported."""
    _pillow()


def _pillow() -> object:
    try:
        import PIL.Image  # noqa: PLC0415 - an optional dependency, loaded when needed
    except ImportError:
        raise ConfigurationError(PILLOW_MISSING) from None
    return PIL.Image


def make_thumbnail(folder: Path, name: str, *, side: int = THUMB_SIDE) -> Thumb | None:
    """The thumbnail of `folder/name` in `folder/.thumbs/`, made unless one newer than the image
    is there; None when the image is missing or Pillow cannot read it."""
    from PIL import Image, UnidentifiedImageError, features  # noqa: PLC0415 - optional

    source = folder / name
    if not source.is_file() or source.is_symlink():
        return None
    webp = features.check("webp")
    target = folder / THUMBS / f"{name}.{'webp' if webp else 'jpg'}"
    try:
        if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
            with Image.open(target) as done:
                return Thumb(name=f"{THUMBS}/{target.name}", width=done.width, height=done.height)
        with Image.open(source) as image:
            image.draft("RGB", (side, side))  # JPEG decodes at a fraction of its size
            image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
            small = image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    tmp = target.with_name(f"{_TEMP_PREFIX}{uuid.uuid4().hex}.part")
    try:
        with _new_file(tmp) as file:
            small.save(file, format="WEBP" if webp else "JPEG", quality=80)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return Thumb(name=f"{THUMBS}/{target.name}", width=small.width, height=small.height)


def _new_file(path: Path) -> io.FileIO:
    """A file created anew for writing: O_EXCL, so never through a symlink."""
    return io.FileIO(path, "xb")


def _thumbs_folder(folder: Path) -> None:
    thumbs = folder / THUMBS
    if thumbs.is_symlink():
        raise ConfigurationError(f"{thumbs} is a symlink: the gallery writes no file through one")
    thumbs.mkdir(exist_ok=True)


def build_gallery(
    folder: str | os.PathLike[str], *, title: str | None = None, workers: int | None = None
) -> Path:
    """Write `folder/index.html` from the folder's manifests (`manifest.jsonl` and every shard's
    `manifest.K-of-N.jsonl`), making missing thumbnails first (`workers` threads; Pillow decodes
    outside the GIL). ConfigurationError without Pillow; FileNotFoundError without a manifest."""
    folder = Path(folder)
    manifests = sorted(
        path
        for path in (folder.iterdir() if folder.is_dir() else ())
        if MANIFEST_PATTERN.fullmatch(path.name) and path.is_file() and not path.is_symlink()
    )
    if not manifests:
        raise FileNotFoundError(f"{folder / MANIFEST_NAME}: no manifest, so no batch to show")
    _pillow()
    entries: dict[str, ManifestEntry] = {}
    for manifest in manifests:
        entries.update(read_manifest(manifest))
    cards = cards_of(entries.values())
    _thumbs_folder(folder)
    names = [card.image for card in cards if card.image is not None]
    with concurrent.futures.ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
        thumbs = dict(zip(names, pool.map(lambda n: make_thumbnail(folder, n), names), strict=True))
    cards = [
        attrs.evolve(card, thumb=thumbs.get(card.image)) if card.image else card for card in cards
    ]
    page = render(cards, title=title or folder.resolve().name)
    target = folder / GALLERY_NAME
    tmp = folder / f"{_TEMP_PREFIX}{uuid.uuid4().hex}.part"
    try:
        with _new_file(tmp) as file:
            file.write(page.encode("utf-8"))
            os.fsync(file.fileno())
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(name: str) -> str:
    return _e(urllib.parse.quote(name))


def _cost_text(cost: Cost) -> str:
    text = f"{money(cost.total, cost.currency)}"
    if cost.reported is not None and cost.reported != cost.estimated:
        text += f" (estimated {money(cost.estimated, cost.currency)})"
    elif cost.reported is None:
        text += " (estimated)"
    return text


def _card(card: Card) -> str:
    rows = [
        (
            "job",
            card.id + (f" · image {card.index + 1} of {card.images}" if card.images > 1 else ""),
        )
    ]
    rows += [
        (label, value) for label, value in (("model", card.model), ("asked", card.asked)) if value
    ]
    if card.delivered:
        rows.append(("made", card.delivered))
    if card.cost is not None:
        rows.append(("cost", _cost_text(card.cost)))
    details = "".join(
        f"<dt>{_e(label)}</dt><dd{' class=down' if label == 'made' and card.downgraded else ''}>"
        f"{_e(value)}</dd>"
        for label, value in rows
    )
    if card.thumb is not None and card.image is not None:
        picture = (
            f'<a class="thumb" href="{_href(card.image)}">'
            f'<img src="{_href(card.thumb.name)}" width="{card.thumb.width}" '
            f'height="{card.thumb.height}" alt="{_e(card.prompt)}"></a>'
        )
    elif card.image is not None:
        picture = f'<a class="thumb none" href="{_href(card.image)}">no thumbnail</a>'
    else:
        picture = f'<div class="thumb none">{_e(card.status.replace("_", " "))}</div>'
    error = f'<p class="error">{_e(card.error)}</p>' if card.error else ""
    return (
        f'<article class="card" data-status="{_e(card.status)}" data-prompt="{_e(card.prompt)}">'
        f'{picture}<div class="meta"><span class="badge {_e(card.status)}">'
        f"{_e(card.status.replace('_', ' '))}</span>"
        f'<p class="prompt" title="{_e(card.prompt)}">{_e(card.prompt)}</p>'
        f"<dl>{details}</dl>{error}</div></article>"
    )


def _totals(cards: Sequence[Card]) -> str:
    jobs: dict[str, Card] = {card.id: card for card in cards}
    costs = [card.cost for card in jobs.values() if card.cost is not None]
    if not costs:
        return ""
    total = sum(costs, Cost(currency=costs[0].currency))
    unknown = sum(
        (c.cost for c in jobs.values() if c.cost is not None and c.status == "outcome_unknown"),
        Cost(currency=total.currency),
    )
    text = f"cost {money(total.total, total.currency)}"
    if unknown.total:
        text += (
            f", of which {money(unknown.total, total.currency)} possibly billed without an image"
        )
    return f'<span class="cost">{_e(text)}</span>'


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def render(cards: Sequence[Card], *, title: str) -> str:
    """The gallery page of `cards` (pure: thumbnails are already made)."""
    counts = dict.fromkeys(STATUSES, 0)
    for card in cards:
        counts[card.status] += 1
    buttons = f'<button data-filter="all" aria-pressed="true">all <b>{len(cards)}</b></button>'
    buttons += "".join(
        f'<button data-filter="{_e(s)}" aria-pressed="false">{_e(s.replace("_", " "))} '
        f"<b>{n}</b></button>"
        for s, n in counts.items()
    )
    return PAGE.format(
        title=_e(title),
        style=STYLE,
        script=SCRIPT,
        style_hash=_sha256(STYLE),
        script_hash=_sha256(SCRIPT),
        buttons=buttons,
        totals=_totals(cards),
        shown=len(cards),
        cards="\n".join(_card(card) for card in cards),
    )
