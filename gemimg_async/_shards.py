"""Shards: a deterministic slice of a batch's jobs, so N processes on N machines share one output.

Shard K of N owns the jobs whose id hashes to K - 1 modulo N: a SHA-256 of the id, never
Python's `hash()` (salted per process), so every machine agrees, and a job stays in its shard
whatever else the job file holds: appending jobs never moves one between shards. Each shard keeps
its own manifest and send log beside the others', and locks only its own::

    OUT/manifest.2-of-4.jsonl          shard 2 of 4's manifest
    OUT/.manifest-sent.2-of-4.jsonl    ... its send log
    OUT/.manifest.2-of-4.lock          ... its lock, where the storage needs an object for it

One shard of one is the whole batch, with the names of an unsharded run (`manifest.jsonl`), so
`--shard 1/1` resumes a run made without `--shard`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import attrs

from ._exceptions import ValidationError

__all__ = ["MANIFEST_PATTERN", "WHOLE", "Shard", "manifest_shard", "owned_counts", "to_shard"]

T = TypeVar("T")

MANIFEST_PATTERN = re.compile(r"manifest(?:\.([1-9][0-9]*)-of-([1-9][0-9]*))?\.jsonl")
"""The name of a batch's manifest: `manifest.jsonl`, or a shard's `manifest.K-of-N.jsonl`."""
_SPEC = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*")
_MAX_SHARDS = 1_000_000


def _bucket(job_id: str, n: int) -> int:
    """The 0-based shard of `job_id` among `n`: the first 8 bytes of its SHA-256, modulo `n`."""
    digest = hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % n


@attrs.frozen(order=True)
class Shard:
    """Shard `k` of `n` (1 <= k <= n): see the module's docstring."""

    k: int
    n: int

    def __attrs_post_init__(self) -> None:
        for value in (self.k, self.n):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValidationError(f"a shard is two whole numbers K/N, not {value!r}")
        if not 1 <= self.n <= _MAX_SHARDS:
            raise ValidationError(f"a batch splits into 1 to {_MAX_SHARDS} shards, not {self.n}")
        if not 1 <= self.k <= self.n:
            raise ValidationError(
                f"shard {self.k}/{self.n} does not exist: K runs from 1 to {self.n}"
            )

    @classmethod
    def parse(cls, spec: str) -> Shard:
        """`"2/4"`: the second of four shards. ValidationError for anything else."""
        match = _SPEC.fullmatch(spec)
        if match is None:
            raise ValidationError(f"a shard is written K/N, such as 2/4, not {spec!r}")
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def of(cls, spec: Shard | str | None) -> Shard:
        """`spec` as a shard: a Shard, `"2/4"`, or None for the whole batch."""
        if spec is None:
            return cls.whole()
        return cls.parse(spec) if isinstance(spec, str) else spec

    @classmethod
    def whole(cls) -> Shard:
        """The whole batch: one shard of one."""
        return cls(1, 1)

    @property
    def is_whole(self) -> bool:
        return self.n == 1

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"

    def owns(self, job_id: str) -> bool:
        """Whether the job `job_id` is this shard's."""
        return self.n == 1 or _bucket(job_id, self.n) == self.k - 1

    def select(self, jobs: Iterable[T], id_of: Callable[[T], str] | None = None) -> Iterator[T]:
        """The jobs of `jobs` this shard owns, lazily (`id_of` reads an id; default `.id`)."""
        read = id_of or _id_attribute
        return (job for job in jobs if self.owns(read(job)))

    @property
    def _suffix(self) -> str:
        return "" if self.is_whole else f".{self.k}-of-{self.n}"

    @property
    def manifest_name(self) -> str:
        """`manifest.K-of-N.jsonl` (`manifest.jsonl` for the whole batch)."""
        return f"manifest{self._suffix}.jsonl"

    @property
    def sent_log_name(self) -> str:
        """`.manifest-sent.K-of-N.jsonl`: the send log beside the manifest."""
        return f".manifest-sent{self._suffix}.jsonl"

    @property
    def lock_name(self) -> str:
        """`.manifest.K-of-N.lock`: the lock object where storage has no file locks."""
        return f".manifest{self._suffix}.lock"

    def foreign(self, manifest_names: Iterable[str]) -> list[str]:
        """The manifests among `manifest_names` written by another split of the batch (the
        whole batch, or N other than ours): their jobs would be sent again by this split, and
        paid twice. A batch refuses to start beside them (or reads them as done)."""
        return sorted(
            name
            for name in manifest_names
            if (shard := manifest_shard(name)) is not None and shard.n != self.n
        )


WHOLE = Shard(1, 1)
"""The whole batch (`Shard.whole()`), as a default."""


def owned_counts(job_ids: Iterable[str], n: int) -> list[int]:
    """How many of `job_ids` each of the `n` shards owns (shard K's count at K - 1): one hash
    per id, whatever `n`."""
    counts = [0] * n
    for job_id in job_ids:
        counts[_bucket(job_id, n)] += 1
    return counts


def to_shard(spec: Shard | str | None) -> Shard:
    """`Shard.of`, as a named function (an attrs converter)."""
    return Shard.of(spec)


def _id_attribute(job: object) -> str:
    job_id = getattr(job, "id", None)
    if not isinstance(job_id, str):
        raise ValidationError(f"a job to shard needs a string id, not {job_id!r:.80}")
    return job_id


def manifest_shard(name: str) -> Shard | None:
    """The shard whose manifest is called `name` (`manifest.jsonl`: the whole batch); None for
    any other name."""
    match = MANIFEST_PATTERN.fullmatch(name)
    if match is None:
        return None
    if match[1] is None:
        return Shard.whole()
    try:
        return Shard(int(match[1]), int(match[2]))
    except ValidationError:
        return None  # manifest.5-of-4.jsonl: no shard of ours wrote it
