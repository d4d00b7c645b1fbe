"""Batches bigger than one machine: each shard of a batch a Ray task, the async runner inside.

    from gemimg_async.ray import run_sharded

    status = run_sharded("jobs.jsonl", "/shared/out", shards=8,
                         client_options={"base_url": "https://relay.example.com"})
    print(status.lines())

Each task runs `run_batch` on the jobs its shard owns (`Shard.owns`: a hash of the id), into
the one output folder beside the other shards, each with its own manifest
(`OUT/manifest.K-of-N.jsonl`, as `gemimg-async batch --shard K/N` writes); together they do every
job once. A task whose worker dies is run again by Ray (its
`max_retries`), and resumes its shard from its manifest: the jobs in flight when it died are
recorded `outcome_unknown` from the send log, never sent again unasked. The result is the
merged status of every shard (`MergedStatus`).

With `redis_url=`, every shard's client shares one key's `max_concurrency` and `rpm` through
Redis (`RedisLimiter`), so N shards together stay within the relay's limits.

The API key is read from each worker's GEMIMG_API_KEY, as the cluster provides it; given in
`client_options` instead, it travels to the workers with the task (as a `Secret`, never shown).

Every worker must reach OUT: a shared filesystem, one machine, or object storage
(`s3://bucket/prefix`, with the credentials in each worker's AWS_* variables: Ray's
`runtime_env`). The status is that of every manifest in OUT (`gemimg-async status OUT JOBS`
prints the same).

Importing this module does not import `ray` (the optional extra ``gemimg-async[ray]``); calling
`run_sharded` does, and starts a local Ray unless `ray.init()` was called before.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

from ._bulk import run_batch
from ._client import Client
from ._exceptions import ConfigurationError, GemimgError
from ._jobs import JobDefaults, read_jobs
from ._merged import MergedStatus, read_folder, read_store
from ._models import ImageRequest
from ._objstore import is_object_url, open_store
from ._secrets import Secret
from ._shards import Shard
from ._summary import BatchSummary

__all__ = [
    "ShardRun",
    "ShardsFailedError",
    "run_shard",
    "run_sharded",
    "sharded_status",
]

_MISSING = "run_sharded needs Ray: pip install 'gemimg-async[ray]' ({error})"


class ShardsFailedError(GemimgError):
    """Some shards' tasks failed for good (Ray's retries spent); `status` is what the shards
    recorded, `failures` why each failed. Run again to resume them."""

    def __init__(self, status: MergedStatus, failures: Mapping[Shard, str]) -> None:
        shown = "; ".join(f"shard {shard}: {why}" for shard, why in sorted(failures.items()))
        super().__init__(f"{len(failures)} shard(s) failed: {shown}")
        self.status = status
        self.failures = dict(failures)


def _secret_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(options or {})
    if out.get("api_key") is not None:
        out["api_key"] = Secret(out["api_key"])
    if "clock" in out or "on_event" in out or "limiter" in out:
        raise ConfigurationError(
            "client_options cannot travel with a clock, a listener or a limiter (give redis_url)"
        )
    return out


@attrs.frozen(kw_only=True)
class ShardRun:
    """What one task does: shard `shard` of `jobs` (a job file every worker can read, or the
    shard's requests) into the folder `out`."""

    shard: Shard
    jobs: str | tuple[ImageRequest, ...]
    out: str
    client_options: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    defaults: JobDefaults = JobDefaults()
    retry_unknown: bool = False
    redo_changed: bool = False
    encoding: str | None = None
    redis_url: str | None = attrs.field(default=None, repr=False)
    """Every shard's client shares its limits through this Redis (`RedisLimiter`)."""


def run_shard(run: ShardRun) -> BatchSummary:
    """Run one shard to its end in this process (what each Ray task does)."""

    async def main() -> BatchSummary:
        limiter = None
        if run.redis_url is not None:
            from .redis import RedisLimiter  # noqa: PLC0415 - the optional extra, when asked

            limiter = RedisLimiter(run.redis_url)
        try:
            async with Client(**run.client_options, limiter=limiter) as client:
                return await run_batch(
                    client,
                    run.jobs,
                    run.out,
                    defaults=run.defaults,
                    retry_unknown=run.retry_unknown,
                    redo_changed=run.redo_changed,
                    encoding=run.encoding,
                    shard=run.shard,
                )
        finally:
            if limiter is not None:
                await limiter.aclose()

    return anyio.run(main)


def run_sharded(
    jobs: str | os.PathLike[str] | Sequence[ImageRequest],
    out: str | os.PathLike[str],
    *,
    shards: int,
    client_options: Mapping[str, Any] | None = None,
    only: Iterable[int] | None = None,
    defaults: JobDefaults = JobDefaults(),
    retry_unknown: bool = False,
    redo_changed: bool = False,
    encoding: str | None = None,
    task_options: Mapping[str, Any] | None = None,
    redis_url: str | None = None,
) -> MergedStatus:
    """Run the `shards` shards of `jobs` as Ray tasks (`only`: those numbers, 1-based) into
    `out`, and return the merged status; see the module's docstring. `client_options` are
    `Client`'s arguments; `task_options` go to Ray (`max_retries`, `num_cpus`, ...);
    `redis_url` makes every shard's client share one key's limits (`max_concurrency`, `rpm`)
    through Redis, as `Client(limiter=RedisLimiter(redis_url))` (the redis extra).
    ShardsFailedError when a shard fails for good, once the others are done."""
    try:
        import ray  # noqa: PLC0415 - an optional extra, loaded only when used
    except ImportError as exc:
        raise ConfigurationError(_MISSING.format(error=exc)) from None
    split = [
        Shard(k, shards) for k in (range(1, shards + 1) if only is None else sorted(set(only)))
    ]
    folder = str(out) if is_object_url(out) else str(Path(out).resolve())
    options = _secret_options(client_options)
    runs = [
        ShardRun(
            shard=shard,
            jobs=str(Path(jobs).resolve())
            if isinstance(jobs, (str, os.PathLike))
            else tuple(shard.select(jobs)),
            out=folder,
            client_options=options,
            defaults=defaults,
            retry_unknown=retry_unknown,
            redo_changed=redo_changed,
            encoding=encoding,
            redis_url=redis_url,
        )
        for shard in split
    ]
    if not ray.is_initialized():
        ray.init()
    task = ray.remote(run_shard).options(num_cpus=1, **(task_options or {}))
    pending = {task.remote(run): run.shard for run in runs}
    failures: dict[Shard, str] = {}
    for ref, shard in pending.items():
        try:
            ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - each shard's failure is reported, not raised alone
            cause = getattr(exc, "cause", None) or exc  # a RayTaskError holds the task's own
            failures[shard] = f"{type(cause).__name__}: {cause}"
    status = sharded_status(folder, jobs=jobs, defaults=defaults, encoding=encoding)
    if failures:
        raise ShardsFailedError(status, failures)
    return status


def sharded_status(
    out: str | os.PathLike[str],
    *,
    jobs: str | os.PathLike[str] | Sequence[ImageRequest] | None = None,
    defaults: JobDefaults = JobDefaults(),
    encoding: str | None = None,
) -> MergedStatus:
    """The merged status of every manifest in `out`, with what `jobs` still holds as left."""
    if jobs is None:
        ids = None
    elif isinstance(jobs, (str, os.PathLike)):
        ids = [r.id for r in read_jobs(jobs, defaults=defaults, encoding=encoding) if r.id]
    else:
        ids = [r.id for r in jobs if r.id]
    if is_object_url(out):  # the workers' store, read with this process's credentials
        return anyio.run(_store_status, str(out), ids)
    return read_folder(out, job_ids=ids)


async def _store_status(url: str, ids: list[str] | None) -> MergedStatus:
    store = open_store(url)
    try:
        return await read_store(store, job_ids=ids)
    finally:
        await store.aclose()
