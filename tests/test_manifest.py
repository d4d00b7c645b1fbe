"""The manifest (`_manifest`): one JSON line per job, read back with the latest line winning."""

import errno
import json
import time
from decimal import Decimal

import pytest

from gemimg_async import (
    MANIFEST_NAME,
    BadRequestError,
    ConnectError,
    Cost,
    DownloadError,
    ManifestEntry,
    OutcomeUnknownError,
    RefusalError,
    ServerError,
    read_manifest,
)
from gemimg_async._manifest import status_of
from helpers import MANIFEST_KEYS, STANDARD


def test_manifest_entry_round_trips_through_json():
    """ManifestEntry.to_json and from_json agree, and a line is one newline-terminated JSON."""
    entry = ManifestEntry(
        id="a",
        status="failed",
        paths=(),
        error="ServerError: HTTP 500: boom\nsecond line",
        attempts=2,
        request_ids=("req_1", "req_2"),
        idempotency_keys=("k",),
        model=STANDARD,
        size="1:1",
        started=1.5,
        finished=2.25,
        prompt="一只狐狸",
        fingerprint="0123456789abcdef",
        cost=Cost.of(Decimal("0.134"), Decimal("0.1")),
    )
    line = entry.to_line()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert ManifestEntry.from_json(json.loads(line)) == entry
    assert set(entry.to_json()) >= MANIFEST_KEYS


def test_latest_line_wins_and_a_torn_last_line_is_ignored(tmp_path):
    """The latest line per id is its state; a torn last line and a bad middle line are skipped."""
    path = tmp_path / MANIFEST_NAME
    lines = [
        ManifestEntry(id="a", status="failed", error="x").to_line(),
        b"garbage in the middle\n",
        ManifestEntry(id="b", status="saved", paths=("b_0.png",)).to_line(),
        ManifestEntry(id="a", status="saved", paths=("a_0.png",)).to_line(),
        b'{"id": "c", "status": "sav',
    ]
    path.write_bytes(b"".join(lines))
    entries = read_manifest(path)
    assert {job_id: entry.status for job_id, entry in entries.items()} == {
        "a": "saved",
        "b": "saved",
    }


def test_a_manifest_of_10000_jobs_is_read_in_well_under_a_second(tmp_path):
    """read_manifest reads 10,000 lines in well under a second (a regression guard, 1 s)."""
    path = tmp_path / MANIFEST_NAME
    entry = ManifestEntry(
        id="x",
        status="saved",
        paths=("x_0.png",),
        attempts=1,
        request_ids=("req_0123456789abcdef01234567",),
        idempotency_keys=("3f9880b6-eb92-4d48-a820-e77f938ede3d",),
        model=STANDARD,
        size="16:9",
        started=1.7e9,
        finished=1.7e9 + 30,
        prompt="a lighthouse on a basalt cliff at dusk, storm clouds parting, cinematic " * 2,
    )
    template = json.dumps(entry.to_json())
    path.write_text("".join(template.replace('"x', f'"j{i:05d}') + "\n" for i in range(10_000)))
    began = time.perf_counter()
    entries = read_manifest(path)
    elapsed = time.perf_counter() - began
    assert len(entries) == 10_000
    assert elapsed < 1.0


def test_a_line_without_a_fingerprint_reads_as_none():
    """A manifest written before fingerprints were kept still reads: its fingerprint is None."""
    doc = ManifestEntry(id="a", status="saved", paths=("a_0.png",)).to_json()
    del doc["fingerprint"]
    assert ManifestEntry.from_json(doc).fingerprint is None


def test_a_line_carries_its_cost_and_one_without_reads_as_none():
    """A line's cost (estimated, reported, total, currency) reads back exactly; a line written
    before costs were kept reads with cost None; a cost that is no cost makes the line bad."""
    entry = ManifestEntry(id="a", status="saved", cost=Cost.of(Decimal("0.24")))
    doc = json.loads(entry.to_line())
    assert doc["cost"] == {"estimated": 0.24, "reported": None, "total": 0.24, "currency": "USD"}
    assert ManifestEntry.from_json(doc).cost == Cost.of(Decimal("0.24"))
    del doc["cost"]
    assert ManifestEntry.from_json(doc).cost is None
    with pytest.raises(ValueError, match="estimated"):
        ManifestEntry.from_json({**doc, "cost": {"estimated": -1}})


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (None, "saved"),
        (RefusalError("no image", status=200), "refused"),
        (ServerError("HTTP 524: a timeout occurred", status=524), "outcome_unknown"),
        (OutcomeUnknownError("read timeout"), "outcome_unknown"),
        (DownloadError("HTTP 502", url="https://e.com/a.png", status=502), "outcome_unknown"),
        (OSError(errno.ENOSPC, "No space left on device"), "outcome_unknown"),
        (ServerError("HTTP 500: boom", status=500), "failed"),
        (BadRequestError("HTTP 400: bad", status=400), "failed"),
        (ConnectError("refused"), "failed"),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else value,
)
def test_the_status_of_an_error_follows_the_retry_policy(error, status):
    """What the retry policy calls outcome unknown (a 524 too), a paid image not fetched or
    not written, is outcome_unknown: perhaps billed, so held back; what was surely not billed
    is failed."""
    assert status_of(error) == status
