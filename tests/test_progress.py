"""The progress displays of `batch` (`_progress`): durations, the status line, the plain and the
rich display.
"""

import io
from decimal import Decimal
from pathlib import Path

import pytest

from gemimg_async import BadLine, BatchStats, BatchSummary, Cost
from gemimg_async._progress import (
    PlainProgress,
    RichProgress,
    format_duration,
    status_line,
    summary_rows,
)


def stats(**kwargs) -> BatchStats:
    fields = {
        "total": 100,
        "saved": 11,
        "failed": 1,
        "skipped": 0,
        "bad_lines": 0,
        "in_flight": 8,
        "images": 12,
        "elapsed": 50.7,
        "limit": 8,
    }
    return BatchStats(**{**fields, **kwargs})


def summary(**kwargs) -> BatchSummary:
    fields = {
        "saved": 95,
        "refused": 1,
        "failed": 3,
        "outcome_unknown": 1,
        "skipped": 40,
        "sent": 60,
        "images": 57,
        "bad_lines": (BadLine("jobs.jsonl", 7, "not valid JSON"),),
        "elapsed": 372.0,
        "manifest": Path("out/manifest.jsonl"),
        "interrupted": False,
    }
    return BatchSummary(**{**fields, **kwargs})


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "--"), (0.84, "0.8s"), (45.2, "45s"), (372, "6m12s"), (7500, "2h05m")],
)
def test_durations_read_at_a_glance(seconds, text):
    """Durations show as 0.8s, 45s, 6m12s, 2h05m, or -- when unknown."""
    assert format_duration(seconds) == text


def test_the_status_line_says_done_failed_in_flight_rate_eta_and_limit():
    """The plain status line has every figure the issue asks for."""
    assert status_line(stats()) == (
        "12/100 done, 1 failed, 8 in flight, 14.2 img/min, ETA 6m12s, limit 8"
    )
    line = status_line(stats(total=None, skipped=5, stopping=True))
    assert line.startswith("17 done (5 before), ")
    assert "ETA --" in line
    assert line.endswith(", stopping")


def test_the_status_line_names_the_endpoints_that_are_down():
    """With several endpoints, those taken out (cooling down or probed) are named."""
    line = status_line(stats(down=("relay-b", "relay-c")))
    assert line.endswith(", limit 8, down: relay-b relay-c")


def test_plain_progress_prints_a_line_per_interval_and_a_summary():
    """PlainProgress writes a status line when its interval has passed, then the summary."""
    out = io.StringIO()
    progress = PlainProgress(interval=3600, file=out)
    progress.start(stats())
    progress.update(stats())  # too soon: nothing
    progress.interval = 0
    progress.update(stats())
    progress.finish(summary())
    lines = out.getvalue().splitlines()
    assert lines[0] == "batch started of about 100 jobs, limit 8"
    assert lines[1] == "12/100 done, 1 failed, 8 in flight, 14.2 img/min, ETA 6m12s, limit 8"
    table = "\n".join(lines[2:])
    for label, value in summary_rows(summary()):
        assert label in table
        assert value in table
    assert "100 (40 done before this run)" in table


def test_rich_progress_draws_a_live_bar_and_a_summary_table():
    """RichProgress shows the bar with its figures on a terminal, then a summary table."""
    from rich.console import Console  # noqa: PLC0415

    console = Console(file=io.StringIO(), force_terminal=True, width=100, color_system=None)
    progress = RichProgress(console)
    progress.start(stats(saved=0, failed=0, images=0, in_flight=0))
    progress.update(stats())
    progress.finish(summary(interrupted=True))
    text = console.file.getvalue()
    assert "12/100 done" in text
    assert "ETA 6m12s" in text
    assert "1 failed · 8 in flight · 14.2 img/min · limit 8" in text
    assert "━" in text
    assert "batch summary" in text
    assert "outcome unknown" in text
    assert "run it again to go on" in text


def test_the_summary_shows_cost_per_tier_this_run_and_possibly_billed():
    """With costs, the table shows each tier's (when more than one), the total estimated and
    reported, this run's share, and what may have been billed without an image."""
    k1 = Cost.of(Decimal("0.536"), Decimal("0.4"))
    k4 = Cost.of(Decimal("0.48"))
    rows = dict(
        summary_rows(
            summary(
                cost=k1 + k4,
                cost_by_tier={"1K": k1, "4K": k4},
                run_cost=k4,
                possibly_billed=Decimal("0.24"),
            )
        )
    )
    assert rows["cost 1K"] == "$0.4000 (estimated $0.5360, reported $0.4000)"
    assert rows["cost 4K"] == "$0.4800 (estimated)"
    assert rows["cost"] == "$0.8800 (estimated $1.0160, reported $0.4000); this run $0.4800"
    assert rows["possibly billed"] == "$0.2400 of it without an image (outcome_unknown)"


def test_the_summary_shows_no_cost_when_none_was_recorded():
    """A summary without costs (a manifest from before they were kept) has no cost rows."""
    labels = [label for label, _ in summary_rows(summary())]
    assert not [label for label in labels if label.startswith(("cost", "possibly"))]
