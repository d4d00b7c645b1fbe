"""How a batch shows its progress: a live `rich` bar on a terminal, plain lines anywhere else.

`rich` comes with the `cli` extra and is imported only when a `RichProgress` starts: the library
itself never needs it.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Protocol, TextIO

import attrs

from ._manifest import STATUSES
from ._prices import money
from ._summary import BatchStats, BatchSummary

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

__all__ = [
    "PlainProgress",
    "Progress",
    "RichProgress",
    "cost_rows",
    "format_duration",
    "rich_available",
    "status_line",
    "summary_rows",
]

_STYLES = {
    "saved": "green",
    "refused": "yellow",
    "failed": "red",
    "outcome_unknown": "magenta",
    "possibly_billed": "magenta",
    "came_back_smaller": "bold red",
    "came_back_another_shape": "bold red",
    "changed": "yellow",
}


class Progress(Protocol):
    """What `BatchRun` tells a display: the start, a snapshot twice a second, the end.

    `finish` gets None when the run failed with an exception.
    """

    def start(self, stats: BatchStats) -> None: ...
    def update(self, stats: BatchStats) -> None: ...
    def finish(self, summary: BatchSummary | None) -> None: ...


def rich_available() -> bool:
    """Whether `rich` (the `cli` extra) can be imported."""
    try:
        import rich  # noqa: F401, PLC0415 - an optional dependency, looked for on demand
    except ImportError:
        return False
    return True


def format_duration(seconds: float | None) -> str:
    """`45s`, `6m12s`, `2h05m`; `--` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "--"
    whole = round(seconds)
    if whole < 60:  # noqa: PLR2004
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"  # noqa: PLR2004
    minutes, secs = divmod(whole, 60)
    if minutes < 60:  # noqa: PLR2004
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def status_line(stats: BatchStats) -> str:
    """`12/100 done, 1 failed, 8 in flight, 14.2 img/min, ETA 6m12s, limit 8`."""
    done = f"{stats.done}/{stats.total}" if stats.total is not None else f"{stats.done}"
    skipped = f" ({stats.skipped} before)" if stats.skipped else ""
    parts = [
        f"{done} done{skipped}",
        f"{stats.failed} failed",
        f"{stats.in_flight} in flight",
        f"{stats.images_per_minute:.1f} img/min",
        f"ETA {format_duration(stats.eta)}",
        f"limit {stats.limit}",
    ]
    if stats.down:
        parts.append(f"down: {' '.join(stats.down)}")
    if stats.stopping:
        parts.append("stopping")
    return ", ".join(parts)


def summary_rows(summary: BatchSummary) -> list[tuple[str, str]]:
    """The final table as (label, value) rows."""
    rows = [(status.replace("_", " "), f"{summary.counts[status]}") for status in STATUSES]
    before = f" ({summary.skipped} done before this run)" if summary.skipped else ""
    rows += [
        ("jobs", f"{summary.total}{before}"),
        ("images saved", f"{summary.images}"),
        ("bad lines", f"{len(summary.bad_lines)}"),
        ("elapsed", format_duration(summary.elapsed)),
        ("manifest", f"{summary.manifest}"),
    ]
    if summary.smaller:
        rows.append(("came back smaller", f"{summary.smaller} image(s) at a lower tier than asked"))
    if summary.other_shape:
        rows.append(("came back another shape", f"{summary.other_shape} image(s)"))
    if summary.changed:
        rows.append(("changed", f"{summary.changed} job(s) changed since they were saved"))
    rows += cost_rows(summary)
    if summary.halted:
        rows.append(("halted", summary.halted))
    elif summary.interrupted:
        rows.append(("stopped", "early: run it again to go on"))
    return rows


def cost_rows(summary: BatchSummary) -> list[tuple[str, str]]:
    """What the folder's batch cost (every run's manifest lines), per tier when it used more
    than one, this run's share, and what may have been billed without an image."""
    cost = summary.cost
    if not cost.estimated and cost.reported is None:
        return []
    tiers = summary.cost_by_tier
    rows = [(f"cost {tier}", f"{part}") for tier, part in tiers.items()] if len(tiers) > 1 else []
    run = money(summary.run_cost.total, cost.currency)
    rows.append(("cost", f"{cost}; this run {run}" if summary.run_cost != cost else f"{cost}"))
    if summary.possibly_billed:
        billed = money(summary.possibly_billed, cost.currency)
        rows.append(("possibly billed", f"{billed} of it without an image (outcome_unknown)"))
    return rows


@attrs.define
class PlainProgress:
    """A status line every `interval` seconds, and a plain summary table at the end."""

    interval: float = 10.0
    file: TextIO | None = None
    """Where to write; None means `sys.stdout` at the time of writing."""
    _last: float = attrs.field(init=False, default=-math.inf)

    def _print(self, text: str) -> None:
        print(text, file=self.file or sys.stdout, flush=True)

    def start(self, stats: BatchStats) -> None:
        self._last = time.monotonic()
        jobs = "" if stats.total is None else f" of about {stats.total} jobs"
        self._print(f"batch started{jobs}, limit {stats.limit}")

    def update(self, stats: BatchStats) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print(status_line(stats))

    def finish(self, summary: BatchSummary | None) -> None:
        if summary is None:
            return
        rows = summary_rows(summary)
        width = max(len(label) for label, _ in rows)
        self._print("\n".join(f"{label:<{width}}  {value}" for label, value in rows))


@attrs.define
class RichProgress:
    """A live bar (done, failed, in flight, images/min, ETA, limit) and a summary table."""

    console: Console | None = None
    _live: Live | None = attrs.field(init=False, default=None)

    def start(self, stats: BatchStats) -> None:
        from rich.console import Console  # noqa: PLC0415 - rich is optional
        from rich.live import Live  # noqa: PLC0415

        if self.console is None:
            self.console = Console()
        self._live = Live(self._render(stats), console=self.console, auto_refresh=False)
        self._live.start(refresh=True)

    def update(self, stats: BatchStats) -> None:
        if self._live is not None:
            self._live.update(self._render(stats), refresh=True)

    def finish(self, summary: BatchSummary | None) -> None:
        from rich.table import Table  # noqa: PLC0415

        if self._live is not None:
            self._live.stop()
            self._live = None
        if summary is None or self.console is None:
            return
        table = Table(title="batch summary", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column(justify="right")
        for label, value in summary_rows(summary):
            style = _STYLES.get(label.replace(" ", "_"), "")
            table.add_row(label, f"[{style}]{value}[/]" if style and value != "0" else value)
        self.console.print(table)

    def _render(self, stats: BatchStats) -> RenderableType:
        from rich.console import Group  # noqa: PLC0415
        from rich.progress_bar import ProgressBar  # noqa: PLC0415
        from rich.table import Table  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        total = stats.total
        head = Text()
        head.append(f"{stats.done}/{total}" if total is not None else f"{stats.done}", "bold")
        head.append(" done  ")
        head.append(f"ETA {format_duration(stats.eta)}", "cyan")
        top = Table.grid(padding=(0, 1), expand=True)
        top.add_column(ratio=1)
        top.add_column(no_wrap=True)
        top.add_row(ProgressBar(total=total, completed=stats.done, pulse=total is None), head)
        line = Text(" · ", "dim").join(
            [
                Text(f"{stats.saved} saved", "green" if stats.saved else "dim"),
                Text(f"{stats.failed} failed", "red" if stats.failed else "dim"),
                Text(f"{stats.in_flight} in flight"),
                Text(f"{stats.images_per_minute:.1f} img/min"),
                Text(f"limit {stats.limit}"),
                *([Text(f"{stats.skipped} done before", "dim")] if stats.skipped else []),
                *([Text(f"down: {' '.join(stats.down)}", "red")] if stats.down else []),
                *([Text("stopping", "bold yellow")] if stats.stopping else []),
            ]
        )
        return Group(top, line)
