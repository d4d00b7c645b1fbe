"""One status of a batch split into shards: every manifest of its output merged.

A folder (or an object store's prefix) holds `manifest.jsonl` and any `manifest.K-of-N.jsonl`;
each gives the latest entry of its ids (`read_manifest`). Merged, they say how many jobs are in
each state, how many images were saved and what was spent, and which ids more than one manifest
holds (none, when every shard kept to its own). Given the job file, they also say what is left:
its jobs that no manifest records yet, those in a send log among them (sent, and not recorded:
in flight, or their shard died).

The counts add up: `saved + refused + failed + outcome_unknown + left == jobs` when the job
file is given.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from ._jobs import JobDefaults, read_jobs
from ._ledger import Ledger
from ._manifest import STATUSES, ManifestEntry, Status, scan
from ._objstore import is_object_url, open_store
from ._prices import money
from ._shards import MANIFEST_PATTERN, Shard, manifest_shard, owned_counts
from ._storage import Store

__all__ = ["MergedStatus", "merge", "read_folder", "read_status", "read_store"]

_SENT = "sent"
_MONEY = Decimal("0.000001")
_SHOWN = 10
_ROWS = 256
"""Shards of a split listed by name even before they have a manifest."""
"""Duplicate ids printed; `--json` lists them all."""


@attrs.frozen(kw_only=True)
class MergedStatus:
    """A batch's state over every manifest of its output."""

    jobs: int
    """Jobs recorded in any manifest, and those of the job file left to do."""
    counts: Mapping[Status, int]
    """Recorded jobs by state (an id in two manifests counts once, as its latest entry)."""
    images: int
    cost: Decimal | None
    """What the jobs recorded cost, as a budget counts it; None when no entry says."""
    currency: str | None
    duplicates: tuple[str, ...]
    """Ids in more than one manifest, sorted: jobs two shards may both have paid for."""
    left: int | None
    """Jobs of the job file no manifest records; None when no job file was given."""
    sent_unrecorded: int
    """Of the jobs no manifest records, those in a send log (may have been billed)."""
    manifests: Mapping[str, int]
    """Each manifest read, by name, with the number of jobs it records."""
    by_manifest: Mapping[str, Mapping[str, int]] = attrs.field(factory=dict, eq=False)
    """Each manifest's jobs by state (its own latest lines), and `left`: the jobs of its shard
    that no manifest records (when the job file was given; then also the shards of the split
    that have not written a manifest yet)."""
    missing: tuple[str, ...] = attrs.field(default=(), eq=False)
    """The ids of the job file's jobs that no manifest records, in the file's order."""

    @property
    def saved(self) -> int:
        return self.counts["saved"]

    @property
    def splits(self) -> list[int]:
        """The shard counts (N) of the manifests: more than one means two splits of the batch."""
        return sorted({s.n for name in self.manifests if (s := manifest_shard(name)) is not None})

    @property
    def done(self) -> bool:
        """Every job of the job file saved, each in one manifest."""
        return self.left == 0 and self.saved == self.jobs and not self.duplicates

    def to_json(self) -> dict[str, Any]:
        """For `gemimg-async status --json`: counts, cost, and the duplicates' ids."""
        return {
            "jobs": self.jobs,
            **{status: self.counts[status] for status in STATUSES},
            "left": self.left,
            "sent_unrecorded": self.sent_unrecorded,
            "images": self.images,
            "cost": None if self.cost is None else float(self.cost.quantize(_MONEY)),
            "currency": self.currency,
            "duplicates": list(self.duplicates),
            "manifests": dict(self.manifests),
            "shards": {name: dict(counts) for name, counts in self.by_manifest.items()},
            "missing": None if self.left is None else list(self.missing),
        }

    def lines(self) -> list[str]:
        """The status as lines to print."""
        shown = ", ".join(self.manifests) or "none"
        out = [f"manifests: {shown}", f"jobs: {self.jobs:,}"]
        notes: dict[str, str] = {
            "saved": f"({self.images:,} images)",
            "outcome_unknown": "(may have been billed: sent again only with --retry-unknown)"
            if self.counts["outcome_unknown"]
            else "",
        }
        out += [
            f"  {status:<16}{self.counts[status]:>10,}  {notes.get(status, '')}".rstrip()
            for status in STATUSES
        ]
        if self.left is None:
            out.append(f"  {'left':<16}{'?':>10}  (give the job file to count what is left)")
        else:
            sent = (
                f"({self.sent_unrecorded:,} sent, not recorded yet)" if self.sent_unrecorded else ""
            )
            out.append(f"  {'left':<16}{self.left:>10,}  {sent}".rstrip())
        out += self._shard_lines()
        if self.cost is not None:
            out.append(f"cost so far: {money(self.cost, self.currency or 'USD')}")
        if self.duplicates:
            ids = ", ".join(self.duplicates[:_SHOWN])
            more = ", ..." if len(self.duplicates) > _SHOWN else ""
            out.append(f"jobs in more than one manifest: {len(self.duplicates):,} ({ids}{more})")
        if len(self.splits) > 1:
            splits = ", ".join(map(str, self.splits))
            out.append(
                f"manifests of {len(self.splits)} different splits ({splits} shards): a job may "
                "be recorded, and paid for, once in each"
            )
        return out

    def _shard_lines(self) -> list[str]:
        """One line per manifest, when there are several; the first jobs not recorded."""
        out = []
        if len(self.by_manifest) > 1:
            heads = ("saved", "refused", "failed", "unknown", "left")
            out.append(f"  {'by manifest':<28}" + "".join(f"{h:>9}" for h in heads))
            for name, counts in self.by_manifest.items():
                cells = [counts.get(s, 0) for s in STATUSES] + [counts.get("left")]
                shown = "".join(f"{'?' if c is None else f'{c:,}':>9}" for c in cells)
                out.append(f"  {name:<28}{shown}")
        if self.missing:
            ids = ", ".join(self.missing[:_SHOWN])
            more = ", ..." if len(self.missing) > _SHOWN else ""
            out.append(f"no line yet: {ids}{more}")
        return out


def _by_manifest(
    manifests: Mapping[str, Mapping[str, ManifestEntry]], missing: list[str] | None
) -> dict[str, dict[str, int]]:
    """Each manifest's counts; with the job ids, also the shards of the batch's one split that
    have no manifest yet (up to `_ROWS` shards), with what they have left."""
    names = sorted(manifests)
    splits = {s.n for name in names if (s := manifest_shard(name)) is not None}
    if missing is not None and len(splits) == 1 and 1 < (n := splits.pop()) <= _ROWS:
        names = sorted({*names, *(Shard(k, n).manifest_name for k in range(1, n + 1))})
    out: dict[str, dict[str, int]] = {}
    left: dict[int, list[int]] = {}  # by N: what each shard of that split has left
    for name in names:
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for entry in manifests.get(name, {}).values():
            counts[entry.status] += 1
        shard = manifest_shard(name)
        if missing is not None and shard is not None:
            if shard.n not in left:
                left[shard.n] = owned_counts(missing, shard.n)
            counts["left"] = left[shard.n][shard.k - 1]
        out[name] = counts
    return out


def merge(
    manifests: Mapping[str, Mapping[str, ManifestEntry]],
    *,
    sent: Iterable[str] = (),
    job_ids: Iterable[str] | None = None,
    ledger: Ledger | None = None,
) -> MergedStatus:
    """Merge the latest entries of each manifest (by name); `sent` are the ids of the send logs,
    `job_ids` those of the job file, `ledger` the charges of every line the manifests hold (a
    job sent twice has two; without it, the latest entries are charged)."""
    latest: dict[str, ManifestEntry] = {}
    seen: Counter[str] = Counter()
    for entries in manifests.values():
        for job_id, entry in entries.items():
            seen[job_id] += 1
            if job_id not in latest or entry.finished >= latest[job_id].finished:
                latest[job_id] = entry
    counts: dict[Status, int] = dict.fromkeys(STATUSES, 0)
    images = 0
    for entry in latest.values():
        counts[entry.status] += 1
        images += len(entry.paths) if entry.status == "saved" else 0
    if ledger is None:
        ledger = Ledger()
        for entry in latest.values():
            ledger.add(entry)
    unrecorded = set(sent) - latest.keys()
    missing = None if job_ids is None else list(dict.fromkeys(_unseen(job_ids, latest)))
    left = None if missing is None else len(missing)
    return MergedStatus(
        jobs=len(latest) + (left or 0),
        counts=counts,
        images=images,
        cost=None if ledger.currency is None else ledger.total.total,
        currency=ledger.currency,
        duplicates=tuple(sorted(job_id for job_id, n in seen.items() if n > 1)),
        left=left,
        sent_unrecorded=len(unrecorded),
        manifests={name: len(entries) for name, entries in sorted(manifests.items())},
        by_manifest=_by_manifest(manifests, missing),
        missing=tuple(missing or ()),
    )


def _unseen(job_ids: Iterable[str], latest: Mapping[str, ManifestEntry]) -> Iterable[str]:
    return (job_id for job_id in job_ids if job_id not in latest)


def _sent_ids(data: bytes) -> set[str]:
    ids = set()
    for line in data.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue  # a torn line: its job was not handed over yet
        if isinstance(doc, dict) and isinstance(doc.get("id"), str):
            ids.add(doc["id"])
    return ids


def _job_ids(jobs: str | os.PathLike[str] | None, defaults: JobDefaults) -> list[str] | None:
    if jobs is None:
        return None
    return [request.id for request in read_jobs(jobs, defaults=defaults) if request.id]


def _is_sent_log(name: str) -> bool:
    return name.startswith(".manifest-sent") and name.endswith(".jsonl")


def read_folder(
    folder: str | os.PathLike[str],
    *,
    jobs: str | os.PathLike[str] | None = None,
    defaults: JobDefaults = JobDefaults(),
    job_ids: Iterable[str] | None = None,
) -> MergedStatus:
    """The merged status of the batch output folder `folder`; `jobs` is its job file, read with
    the batch's `defaults` (job ids derived from them must match), to count what is left (or
    `job_ids`, the ids themselves)."""
    path = Path(folder)
    names = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    ledger = Ledger()
    manifests = {}
    for name in filter(MANIFEST_PATTERN.fullmatch, names):
        with (path / name).open("rb") as file:
            manifests[name] = scan(file, path / name, ledger.add).entries
    sent = set().union(*(_sent_ids((path / n).read_bytes()) for n in names if _is_sent_log(n)))
    ids = _job_ids(jobs, defaults) if job_ids is None else job_ids
    return merge(manifests, sent=sent, job_ids=ids, ledger=ledger)


async def read_store(
    store: Store,
    *,
    jobs: str | os.PathLike[str] | None = None,
    defaults: JobDefaults = JobDefaults(),
    job_ids: Iterable[str] | None = None,
) -> MergedStatus:
    """`read_folder` of a `Store` (object storage: `s3://bucket/prefix`)."""
    manifests: dict[str, dict[str, ManifestEntry]] = {}
    sent: set[str] = set()
    ledger = Ledger()
    for name in await store.logs():
        if MANIFEST_PATTERN.fullmatch(name):
            data = await store.read_log(name)
            manifests[name] = scan(io.BytesIO(data), Path(store.url) / name, ledger.add).entries
        elif _is_sent_log(name):
            sent |= _sent_ids(await store.read_log(name))
    ids = _job_ids(jobs, defaults) if job_ids is None else job_ids
    return merge(manifests, sent=sent, job_ids=ids, ledger=ledger)


async def read_status(
    out: str | os.PathLike[str],
    *,
    jobs: str | os.PathLike[str] | None = None,
    defaults: JobDefaults = JobDefaults(),
    **storage_options: Any,
) -> MergedStatus:
    """The merged status of the batch output `out`: a folder, or an object storage URL
    (`s3://bucket/prefix`; `storage_options` go to its filesystem). What `gemimg-async status`
    prints."""
    if not is_object_url(out):
        return read_folder(out, jobs=jobs, defaults=defaults)
    store = open_store(out, **storage_options)
    try:
        return await read_store(store, jobs=jobs, defaults=defaults)
    finally:
        await store.aclose()
