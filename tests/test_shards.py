"""Shards: K/N parsed and checked, each id in exactly one shard by a stable hash, a balanced
split, names per shard, and jobs that stay in their shard as the job file grows."""

import hashlib
import math
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gemimg_async import ImageRequest, ValidationError
from gemimg_async._shards import Shard, manifest_shard, owned_counts

ids = st.text(min_size=1, max_size=40)


@pytest.mark.parametrize(
    ("spec", "k", "n"), [("1/1", 1, 1), ("2/4", 2, 4), (" 3 / 3 ", 3, 3), ("07/10", 7, 10)]
)
def test_parse_reads_k_of_n(spec, k, n):
    """`K/N` is shard K of N, spaces and leading zeros allowed."""
    assert Shard.parse(spec) == Shard(k, n)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("0/4", "K runs from 1 to 4"),
        ("5/4", "K runs from 1 to 4"),
        ("1/0", "1 to 1000000 shards"),
        ("2", "written K/N"),
        ("-1/4", "written K/N"),
        ("1/4/2", "written K/N"),
        ("a/b", "written K/N"),
        ("", "written K/N"),
        ("1/2000000", "1 to 1000000 shards"),
    ],
)
def test_parse_refuses_what_is_no_shard(spec, says):
    """A spec that names no shard is a ValidationError saying what a shard is."""
    with pytest.raises(ValidationError, match=says):
        Shard.parse(spec)


def test_of_takes_a_shard_a_spec_or_none():
    """Shard.of: a Shard as it is, "2/4" parsed, None the whole batch."""
    assert Shard.of(Shard(2, 4)) == Shard.of("2/4") == Shard(2, 4)
    assert Shard.of(None) == Shard.whole()
    with pytest.raises(ValidationError, match="K/N"):
        Shard.of("2-4")


def test_owned_counts_agree_with_owns():
    """owned_counts gives, for each shard, how many of the ids it owns."""
    ids = [f"job-{i}" for i in range(200)]
    assert owned_counts(ids, 7) == [sum(Shard(k, 7).owns(i) for i in ids) for k in range(1, 8)]
    assert owned_counts(ids, 1) == [200]


def test_a_shard_is_two_whole_numbers():
    """True, floats and strings are not shard numbers."""
    for k, n in [(True, 2), (1.0, 2), ("1", 2)]:
        with pytest.raises(ValidationError, match="two whole numbers"):
            Shard(k, n)


def test_names_per_shard():
    """Each shard has a manifest, a send log and a lock of its own; 1/1 keeps the plain names."""
    shard = Shard(2, 4)
    assert (shard.manifest_name, shard.sent_log_name, shard.lock_name) == (
        "manifest.2-of-4.jsonl",
        ".manifest-sent.2-of-4.jsonl",
        ".manifest.2-of-4.lock",
    )
    whole = Shard.whole()
    assert (whole.manifest_name, whole.sent_log_name) == ("manifest.jsonl", ".manifest-sent.jsonl")
    assert str(shard) == "2/4"


def test_manifest_shard_reads_names_back():
    """A manifest's name gives back its shard; other names, and impossible shards, give None."""
    for shard in (Shard(1, 1), Shard(3, 7), Shard(12, 12)):
        assert manifest_shard(shard.manifest_name) == shard
    for name in ("manifest.5-of-4.jsonl", "manifest.0-of-4.jsonl", "manifest.2-of-4.json", "x"):
        assert manifest_shard(name) is None


def test_foreign_names_other_splits():
    """The manifests of another split of the batch are foreign; those of the same N are not."""
    names = ["manifest.jsonl", "manifest.1-of-4.jsonl", "manifest.2-of-3.jsonl", "notes.jsonl"]
    assert Shard(2, 4).foreign(names) == ["manifest.2-of-3.jsonl", "manifest.jsonl"]
    assert Shard.whole().foreign(names) == ["manifest.1-of-4.jsonl", "manifest.2-of-3.jsonl"]


@given(job_id=ids, n=st.integers(1, 64))
def test_every_id_belongs_to_exactly_one_shard(job_id, n):
    """Of the N shards, exactly one owns any id."""
    assert sum(Shard(k, n).owns(job_id) for k in range(1, n + 1)) == 1


@given(old=st.lists(ids, max_size=50), new=st.lists(ids, max_size=50), n=st.integers(1, 16))
def test_growing_the_job_file_moves_no_job(old, new, n):
    """Appending jobs to the file changes no existing job's shard."""
    before = {k: set(Shard(k, n).select(old, str)) for k in range(1, n + 1)}
    after = {k: set(Shard(k, n).select(old + new, str)) for k in range(1, n + 1)}
    assert all(before[k] <= after[k] for k in before)
    assert all(after[k] - before[k] <= set(new) for k in after)


@pytest.mark.parametrize("n", [2, 3, 4, 7, 16])
def test_the_split_is_balanced(n):
    """10,000 ids split about evenly: each shard within five standard deviations of its share
    (a binomial's: under 5% of all ids for 2 shards, 20% of a share for 16)."""
    jobs = [f"job-{i}" for i in range(10_000)]
    counts = Counter(next(k for k in range(1, n + 1) if Shard(k, n).owns(j)) for j in jobs)
    share = len(jobs) / n
    assert sorted(counts) == list(range(1, n + 1))
    sigma = math.sqrt(len(jobs) * (1 / n) * (1 - 1 / n))
    assert all(abs(count - share) < 5 * sigma for count in counts.values()), counts


def test_the_hash_is_sha256_not_python_hash():
    """The shard is SHA-256's first 8 bytes modulo N, the same in a process with a fixed hash
    seed as in this one (seeded at random)."""
    job_id = "portrait-0042"
    expected = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") % 7 + 1
    assert Shard(expected, 7).owns(job_id)
    code = (
        "from gemimg_async._shards import Shard;"
        f"print([k for k in range(1, 8) if Shard(k, 7).owns({job_id!r})])"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "1"},
    ).stdout
    assert out.strip() == f"[{expected}]"


def test_select_reads_request_ids():
    """`select` reads `.id` of requests by default, and refuses a job without one."""
    requests = [ImageRequest("a cat", id=f"job-{i}") for i in range(20)]
    shards = [list(Shard(k, 3).select(requests)) for k in (1, 2, 3)]
    assert sorted(r.id for shard in shards for r in shard) == sorted(r.id for r in requests)
    with pytest.raises(ValidationError, match="string id"):
        list(Shard(1, 2).select([ImageRequest("a cat")]))


def test_ids_that_are_not_utf8_still_shard():
    """An id holding a lone surrogate (a job file's undecodable byte) has a shard like any."""
    assert sum(Shard(k, 3).owns("bad-\udcff") for k in (1, 2, 3)) == 1
