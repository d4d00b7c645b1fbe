"""What is safe to send again, when, and how often.

Every generation is paid for, so failures are sorted by what they say about billing:

| failure                                    | class           | default                     |
| ------------------------------------------ | --------------- | --------------------------- |
| DNS, refused, connect timeout, early reset | not sent        | 3 attempts, 0.5 s x2 to 8 s |
| 429, 503, 408                              | throttled       | 5 attempts, Retry-After or  |
|                                            |                 | 5 s x2 to 60 s, full jitter |
| 500, 502, 504                              | server          | 1 retry                     |
| read timeout, late reset, truncated body,  | outcome unknown | never (opt-in: 1, same key) |
| 524 (a proxy gave up waiting)              |                 |                             |
| other 4xx, blocked prompt, refusal         | permanent       | never                       |

A Retry-After above `RetryPolicy.max_retry_after` is raised at once. Every other retry also needs
the client-wide `RetryBudget`, so a dead relay gets errors, not a storm; waiting as a throttling
server asks (Retry-After) is not charged to it.
"""

from __future__ import annotations

import enum
import itertools
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import TypeVar

import attrs

from ._config import RetryPolicy
from ._exceptions import (
    ConnectError,
    DownloadError,
    GemimgError,
    ImageExpiredError,
    OutcomeUnknownError,
    RateLimitError,
    ServerError,
)

__all__ = [
    "GAVE_UP_STATUSES",
    "THROTTLE_STATUSES",
    "DownloadRetrier",
    "Failure",
    "GenerationRetrier",
    "RetryBudget",
    "Verdict",
    "call_with_retries",
    "classify",
    "parse_retry_after",
]

log = logging.getLogger("gemimg_async")
T = TypeVar("T")

THROTTLE_STATUSES = frozenset({408, 429, 503})
GAVE_UP_STATUSES = frozenset({524})
"""Statuses of a proxy that stopped waiting for an answer still being generated."""


class Failure(enum.Enum):
    """What a failure says about whether the request was sent, and so billed."""

    NOT_SENT = "not sent"
    THROTTLED = "throttled"
    SERVER = "server"
    OUTCOME_UNKNOWN = "outcome unknown"
    PERMANENT = "permanent"


def classify(error: GemimgError) -> Failure:
    if isinstance(error, ConnectError):
        return Failure.NOT_SENT
    if isinstance(error, RateLimitError) or (
        isinstance(error, ServerError) and error.status in THROTTLE_STATUSES
    ):
        return Failure.THROTTLED
    if isinstance(error, ServerError):
        # 524: a proxy gave up waiting while the relay went on generating, and billing
        return Failure.OUTCOME_UNKNOWN if error.status in GAVE_UP_STATUSES else Failure.SERVER
    if isinstance(error, OutcomeUnknownError):
        return Failure.OUTCOME_UNKNOWN
    return Failure.PERMANENT


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the server asks us to wait (`retry-after-ms`, then `Retry-After` in seconds or as
    an HTTP date, against the wall clock `now`); None when absent or unreadable."""
    try:
        milliseconds = float(headers.get("retry-after-ms", ""))
    except ValueError:
        pass
    else:
        if 0 <= milliseconds < float("inf"):
            return milliseconds / 1000
    value = headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return seconds if 0 <= seconds < float("inf") else None


@attrs.define
class RetryBudget:
    """gRPC-style retry throttling, shared by every request of a client.

    A failure that could be retried costs a token, a success earns `ratio` of one back; retries
    are allowed only while more than half of `max_tokens` remain.
    """

    max_tokens: float
    ratio: float
    tokens: float = attrs.field()

    @tokens.default
    def _full(self) -> float:
        return self.max_tokens

    def succeeded(self) -> None:
        self.tokens = min(self.max_tokens, self.tokens + self.ratio)

    def failed(self) -> bool:
        """Record a retryable failure; True while the budget still allows a retry."""
        self.tokens = max(0.0, self.tokens - 1)
        return self.tokens > self.max_tokens / 2


@attrs.frozen
class Verdict:
    """What one failure means: its class, and the seconds to wait before sending again (None:
    do not)."""

    kind: Failure
    delay: float | None


@attrs.define
class GenerationRetrier:
    """The retry decisions for one generation request, across its attempts."""

    policy: RetryPolicy
    budget: RetryBudget
    rng: random.Random
    _failures: Counter[Failure] = attrs.Factory(Counter)

    def judge(self, error: GemimgError) -> Verdict:
        """Whether, and after how long, to send again after `error`."""
        kind = classify(error)
        return Verdict(kind, None if kind is Failure.PERMANENT else self._delay(kind, error))

    def _delay(self, kind: Failure, error: GemimgError) -> float | None:
        self._failures[kind] += 1
        retry_after = getattr(error, "retry_after", None)
        too_long = retry_after is not None and retry_after > self.policy.max_retry_after
        if self._failures[kind] >= self._attempts(kind) or too_long:
            return None
        if retry_after is not None and kind is Failure.THROTTLED:
            return float(retry_after)  # the server's own pacing: not a storm, not budgeted
        if not self.budget.failed():
            log.warning("retry budget exhausted: not retrying %s", type(error).__name__)
            return None
        if retry_after is not None:
            return float(retry_after)
        backoff = (
            self.policy.throttled_backoff
            if kind is Failure.THROTTLED
            else self.policy.not_sent_backoff
        )
        return backoff.delay(self._failures[kind] - 1, self.rng)

    def _attempts(self, kind: Failure) -> int:
        return {
            Failure.NOT_SENT: self.policy.not_sent_attempts,
            Failure.THROTTLED: self.policy.throttled_attempts,
            Failure.SERVER: self.policy.server_attempts,
            Failure.OUTCOME_UNKNOWN: self.policy.outcome_unknown_attempts,
        }[kind]


@attrs.define
class DownloadRetrier:
    """Retry decisions for fetching one image URL: the image is paid for, so persist a little."""

    policy: RetryPolicy
    rng: random.Random
    _failures: int = 0

    def delay(self, error: GemimgError) -> float | None:
        if not isinstance(error, DownloadError) or isinstance(error, ImageExpiredError):
            return None
        if error.status is not None and error.status != 429 and error.status < 500:  # noqa: PLR2004
            return None
        self._failures += 1
        if self._failures >= self.policy.download_attempts:
            return None
        return self.policy.download_backoff.delay(self._failures - 1, self.rng)


async def call_with_retries(
    attempt: Callable[[int], Awaitable[T]],
    retrier: DownloadRetrier,
    sleep: Callable[[float], Awaitable[None]],
    *,
    what: str,
) -> T:
    """Await `attempt(1)`, `attempt(2)`, ... until one succeeds or `retrier` says stop;
    `sleep(delay)` waits between them."""
    for number in itertools.count(1):
        try:
            return await attempt(number)
        except GemimgError as error:
            error.attempts = number
            delay = retrier.delay(error)
            if delay is None:
                raise
            log.info("%s: attempt %d failed (%s); retrying in %.2f s", what, number, error, delay)
            await sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
