"""The merged status of a sharded batch: every manifest of a folder or an object store read,
jobs counted once by state, images and cost summed, ids in two manifests named, and what the job
file still holds counted as left."""

import json
from decimal import Decimal

import attrs
import pytest

from gemimg_async import ManifestEntry
from gemimg_async._merged import merge, read_folder, read_status, read_store
from gemimg_async._objstore import open_store
from gemimg_async._prices import Cost
from gemimg_async._shards import Shard

IDS = [f"job-{i}" for i in range(12)]


@attrs.frozen(kw_only=True)
class CostedEntry(ManifestEntry):
    """An entry with the cost the manifest keeps from the cost issue on (whether or not
    ManifestEntry has the field yet)."""

    cost: Cost | None = None


def entry(job_id, status="saved", *, finished=1.0, paths=None, cost=None):
    if paths is None:
        paths = (f"{job_id}_0.png",) if status == "saved" else ()
    if cost is None:
        return ManifestEntry(id=job_id, status=status, paths=paths, finished=finished)
    return CostedEntry(id=job_id, status=status, paths=paths, finished=finished, cost=cost)


def write_shards(folder, entries_by_shard, n):
    """Write each shard's entries as its manifest in `folder`."""
    folder.mkdir(exist_ok=True)
    for k, entries in entries_by_shard.items():
        path = folder / Shard(k, n).manifest_name
        path.write_bytes(b"".join(e.to_line() for e in entries))


def write_jobs(path, ids):
    path.write_text("".join(json.dumps({"id": i, "prompt": f"a cat {i}"}) + "\n" for i in ids))
    return path


def test_merge_counts_each_job_once_by_state():
    """Jobs of two shards add up by state; images count what the saved jobs hold."""
    status = merge(
        {
            "manifest.1-of-2.jsonl": {"a": entry("a"), "b": entry("b", "failed")},
            "manifest.2-of-2.jsonl": {
                "c": entry("c", paths=("c_0.png", "c_1.png")),
                "d": entry("d", "outcome_unknown"),
                "e": entry("e", "refused"),
            },
        }
    )
    assert dict(status.counts) == {"saved": 2, "refused": 1, "failed": 1, "outcome_unknown": 1}
    assert (status.jobs, status.images, status.duplicates, status.left) == (5, 3, (), None)
    assert status.cost is None
    assert dict(status.manifests) == {"manifest.1-of-2.jsonl": 2, "manifest.2-of-2.jsonl": 3}


def test_an_id_in_two_manifests_is_a_duplicate_counted_once_as_its_latest():
    """An id two shards recorded is listed, and counted once, as the entry that ended last."""
    status = merge(
        {
            "manifest.1-of-2.jsonl": {"a": entry("a", "failed", finished=5.0), "b": entry("b")},
            "manifest.2-of-2.jsonl": {"a": entry("a", finished=9.0)},
        }
    )
    assert status.duplicates == ("a",)
    assert status.jobs == 2
    assert status.counts["saved"] == 2
    assert not status.done


def test_left_is_what_the_job_file_holds_and_no_manifest_records():
    """Given the job file's ids, left counts those unrecorded; the states and left add up to
    the jobs; sent and unrecorded ids are counted among the left."""
    status = merge(
        {"manifest.1-of-2.jsonl": {"a": entry("a"), "b": entry("b", "failed")}},
        sent=["b", "c"],
        job_ids=["a", "b", "c", "d"],
    )
    assert (status.left, status.sent_unrecorded, status.jobs) == (2, 1, 4)
    assert sum(status.counts.values()) + status.left == status.jobs
    done = merge({"manifest.jsonl": {"a": entry("a")}}, job_ids=["a"])
    assert done.done


def test_cost_sums_what_a_budget_counts():
    """Saved and outcome_unknown jobs count their total; refused and failed only a reported
    cost; entries without a cost (older manifests) count nothing."""
    cost = Cost.of(Decimal("0.134"))
    status = merge(
        {
            "manifest.jsonl": {
                "a": entry("a", cost=cost),
                "b": entry("b", "outcome_unknown", cost=cost),
                "c": entry("c", "failed", cost=cost),
                "d": entry("d", "refused", cost=Cost.of(Decimal("0.134"), Decimal("0.05"))),
                "e": entry("e"),
            }
        }
    )
    assert status.cost == Decimal("0.318")
    assert status.currency == "USD"
    assert status.to_json()["cost"] == 0.318
    assert "cost so far: $0.3180" in status.lines()


def test_to_json_has_every_count_and_the_duplicates():
    """The JSON for scripts: jobs, each state, left and images as counts, duplicates by id."""
    status = merge(
        {
            "manifest.1-of-2.jsonl": {"a": entry("a")},
            "manifest.2-of-2.jsonl": {"a": entry("a"), "b": entry("b", "failed")},
        },
        job_ids=["a", "b", "c"],
    )
    doc = json.loads(json.dumps(status.to_json()))
    assert {k: doc[k] for k in ("jobs", "saved", "failed", "refused", "outcome_unknown")} == {
        "jobs": 3,
        "saved": 1,
        "failed": 1,
        "refused": 0,
        "outcome_unknown": 0,
    }
    assert (doc["left"], doc["duplicates"], doc["images"], doc["cost"]) == (1, ["a"], 1, None)


def test_lines_say_what_a_person_needs():
    """Printed: the manifests, each state, what is left, duplicates, and mixed splits."""
    status = merge(
        {
            "manifest.jsonl": {"a": entry("a")},
            "manifest.1-of-2.jsonl": {"a": entry("a"), "b": entry("b", "outcome_unknown")},
        },
        sent=["c"],
        job_ids=["a", "b", "c"],
    )
    text = "\n".join(status.lines())
    assert "manifests: manifest.1-of-2.jsonl, manifest.jsonl" in text
    assert "saved" in text
    assert "--retry-unknown" in text
    assert "(1 sent, not recorded yet)" in text
    assert "jobs in more than one manifest: 1 (a)" in text
    assert "2 different splits (1, 2 shards)" in text
    assert "give the job file" in "\n".join(merge({}).lines())


def test_each_manifest_has_its_own_counts_and_left():
    """Per manifest: its jobs by state, and the jobs of its shard no manifest records; the ids
    left are named in the job file's order."""
    ids = [f"job-{i}" for i in range(8)]
    one = {i: entry(i) for i in ids if Shard(1, 2).owns(i)}
    two = {i: entry(i, "failed") for i in ids if Shard(2, 2).owns(i)}
    del two[next(iter(two))]
    status = merge(
        {"manifest.1-of-2.jsonl": one, "manifest.2-of-2.jsonl": two}, job_ids=[*ids, "extra"]
    )
    first, second = status.by_manifest.values()
    assert (first["saved"], first["left"]) == (
        len(one),
        sum(Shard(1, 2).owns(i) for i in status.missing),
    )
    assert (second["failed"], second["saved"]) == (len(two), 0)
    assert first["left"] + second["left"] == status.left == 2
    assert status.missing == tuple(i for i in [*ids, "extra"] if i not in one and i not in two)
    doc = status.to_json()
    assert doc["missing"] == list(status.missing)
    assert doc["shards"]["manifest.2-of-2.jsonl"]["failed"] == len(two)
    text = "\n".join(status.lines())
    assert "manifest.2-of-2.jsonl" in text
    assert f"no line yet: {', '.join(status.missing)}" in text
    assert merge({"manifest.jsonl": one}).to_json()["missing"] is None


def test_read_folder_merges_every_shard_of_a_folder(tmp_path):
    """A folder of four shards' manifests, a send log and a job file: each job once."""
    out = tmp_path / "out"
    by_shard = {k: [entry(i) for i in IDS[:10] if Shard(k, 4).owns(i)] for k in range(1, 5)}
    write_shards(out, by_shard, 4)
    (out / ".manifest-sent.3-of-4.jsonl").write_text(json.dumps({"id": IDS[10], "at": 0}) + "\n")
    (out / "notes.jsonl").write_text("{}\n")  # not a manifest
    status = read_folder(out, jobs=write_jobs(tmp_path / "jobs.jsonl", IDS))
    assert (status.jobs, status.saved, status.left, status.sent_unrecorded) == (12, 10, 2, 1)
    assert status.duplicates == ()
    assert sorted(status.manifests) == [Shard(k, 4).manifest_name for k in range(1, 5)]


def test_the_cost_so_far_charges_every_sending_as_the_ledger_does(tmp_path):
    """A job that failed (the relay reporting a charge) and was then saved charges both lines,
    as the batch's summary and budget count it, not only its latest."""
    out = tmp_path / "out"
    failed = entry("a", "failed", finished=1.0, cost=Cost.of(Decimal("0.134"), Decimal("0.05")))
    saved = entry("a", "saved", finished=2.0, cost=Cost.of(Decimal("0.134")))
    write_shards(out, {1: [failed, saved]}, 1)
    status = read_folder(out)
    assert (status.saved, status.cost) == (1, Decimal("0.184"))


def test_read_folder_of_a_folder_not_made_yet(tmp_path):
    """A folder that does not exist has recorded nothing: everything is left."""
    status = read_folder(tmp_path / "none", jobs=write_jobs(tmp_path / "jobs.jsonl", IDS[:3]))
    assert (status.jobs, status.left, dict(status.manifests)) == (3, 3, {})


@pytest.mark.anyio
async def test_read_store_reads_object_storage_like_a_folder(s3, tmp_path):
    """The same shards written as log objects on S3 merge into the same status as a folder."""
    store = open_store(s3)
    by_shard = {k: [entry(i) for i in IDS if Shard(k, 3).owns(i)] for k in range(1, 4)}
    by_shard[2].append(entry(IDS[0], "failed"))  # a job in two shards' manifests
    for k, entries in by_shard.items():
        for e in entries:
            await store.append(Shard(k, 3).manifest_name, e.to_line())
    await store.append(Shard(1, 3).sent_log_name, json.dumps({"id": "x", "at": 0}).encode() + b"\n")
    jobs = write_jobs(tmp_path / "jobs.jsonl", [*IDS, "x"])
    from_store = await read_store(store, jobs=jobs)
    write_shards(tmp_path / "out", by_shard, 3)
    from_folder = read_folder(tmp_path / "out", jobs=jobs)
    assert from_store.duplicates == (IDS[0],)
    assert (from_store.jobs, from_store.left, from_store.sent_unrecorded) == (13, 1, 1)
    assert attrs.evolve(from_store, sent_unrecorded=0) == from_folder


@pytest.mark.anyio
async def test_read_status_takes_a_folder_or_a_url(s3, tmp_path):
    """`read_status` reads a folder path or an s3:// URL, whichever `out` is."""
    store = open_store(s3)
    await store.append("manifest.1-of-2.jsonl", entry("a").to_line())
    write_shards(tmp_path / "out", {1: [entry("a")]}, 2)
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["a", "b"])
    for out in (s3, tmp_path / "out", str(tmp_path / "out")):
        status = await read_status(out, jobs=jobs)
        assert (status.jobs, status.saved, status.left) == (2, 1, 1)
