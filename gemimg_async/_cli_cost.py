"""The cost options of `batch`: `--dry-run`, `--prices`, `--max-cost` and `--gallery`."""

from __future__ import annotations

import argparse
from decimal import Decimal
from pathlib import Path

from ._exceptions import ConfigurationError
from ._spending import max_cost_of

__all__ = ["add_cost_options"]


def add_cost_options(parser: argparse.ArgumentParser) -> None:
    """Add what a batch will cost, may cost, and shows of what it made."""
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check every job and print what the batch would cost, sending nothing (exit 0 when "
        "every job is valid, 2 when a line is bad); with a manifest in DIR, what the next run "
        "would send",
    )
    parser.add_argument(
        "--prices",
        type=Path,
        metavar="FILE",
        help="the relay's prices, a .toml or .json table (default Google's list prices: $0.134 "
        "per 1K or 2K image, $0.24 per 4K image)",
    )
    parser.add_argument(
        "--max-cost",
        type=_amount,
        metavar="AMOUNT",
        help="start no request that could take what DIR's batch has cost (every run, requests "
        "in flight and outcome_unknown ones counted) past AMOUNT; run again with a higher cap "
        "to go on",
    )
    parser.add_argument(
        "--gallery",
        action="store_true",
        help="write DIR/index.html when the batch ends (the gallery extra: Pillow)",
    )


def _amount(text: str) -> Decimal:
    try:
        return max_cost_of(text.strip().removeprefix("$"))
    except ConfigurationError:
        raise argparse.ArgumentTypeError(
            f"must be an amount of at least 0, such as 5.00, not {text!r}"
        ) from None
