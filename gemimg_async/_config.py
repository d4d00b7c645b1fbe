"""Configuration values and their defaults.

Every number the client uses is a named `DEFAULT_*` constant here or a field of a frozen value, so
a user can see it, override it per client or per call, and serialise it with the rest of a job.
"""

from __future__ import annotations

import enum
import random

import attrs

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DOWNLOAD_TIMEOUT",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_READ_TIMEOUT_4K",
    "MAX_INLINE_IMAGE_BYTES",
    "MAX_INPUT_IMAGES",
    "USE_CLIENT_DEFAULT",
    "Backoff",
    "RetryPolicy",
    "Timeouts",
    "UseClientDefault",
]


class UseClientDefault(enum.Enum):
    """The type of `USE_CLIENT_DEFAULT`."""

    USE_CLIENT_DEFAULT = "USE_CLIENT_DEFAULT"


USE_CLIENT_DEFAULT = UseClientDefault.USE_CLIENT_DEFAULT
"""A call's `pool_timeout=` when not given: the client's own (None, waiting, is a value)."""

DEFAULT_MAX_CONCURRENCY = 8
"""Generations in flight at once per client, across every task that uses it."""

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 300.0
"""Longest silence while the relay generates a standard or 2K image: nothing is sent meanwhile."""
DEFAULT_READ_TIMEOUT_4K = 600.0
DEFAULT_DOWNLOAD_TIMEOUT = 60.0
"""Longest silence between two chunks of an image download."""

DEFAULT_MAX_IMAGE_BYTES = 256 * 1024 * 1024
"""Largest image accepted from a relay or an image host; a 4K PNG is tens of megabytes."""

MAX_INPUT_IMAGES = 14
MAX_INLINE_IMAGE_BYTES = 7 * 1024 * 1024
"""Largest local image sent inline as a data: URI (Google's limit is about 7 MB)."""


@attrs.frozen
class Timeouts:
    """Seconds allowed per phase of a request; `None` means no limit.

    There is no total limit by default: a 4K generation takes minutes, and a download of its
    result follows. `read` is the longest silence while the relay generates.
    """

    connect: float | None = DEFAULT_CONNECT_TIMEOUT
    read: float | None = DEFAULT_READ_TIMEOUT
    read_4k: float | None = DEFAULT_READ_TIMEOUT_4K
    download: float | None = DEFAULT_DOWNLOAD_TIMEOUT
    total: float | None = None

    def read_for(self, model: str) -> float | None:
        """The read timeout for `model`: 4K models get the longer one."""
        return self.read_4k if model.endswith("-4k") else self.read


@attrs.frozen
class Backoff:
    """Exponential backoff: the k-th retry waits `min(initial * factor**k, maximum)` seconds.

    With `full_jitter` the wait is drawn from [0, that]; otherwise from [half of it, all of it].
    """

    initial: float
    factor: float = 2.0
    maximum: float = 60.0
    full_jitter: bool = False

    def delay(self, retry: int, rng: random.Random) -> float:
        ceiling = min(self.initial * self.factor**retry, self.maximum)
        return rng.uniform(0.0 if self.full_jitter else ceiling / 2, ceiling)


@attrs.frozen
class RetryPolicy:
    """What to retry, how often and how long to wait. See `_retry.py` for the classes.

    Attempt counts are per class of failure; every retry also draws on the client-wide budget
    (`budget_tokens` / `budget_ratio`, gRPC retry throttling), so a relay that is down gets
    errors surfaced instead of a retry storm.
    """

    not_sent_attempts: int = 3
    not_sent_backoff: Backoff = Backoff(0.5, maximum=8.0)
    throttled_attempts: int = 5
    throttled_backoff: Backoff = Backoff(5.0, maximum=60.0, full_jitter=True)
    max_retry_after: float = 120.0
    """A longer Retry-After than this is raised at once, with the value on the error."""
    server_attempts: int = 2
    outcome_unknown_attempts: int = 1
    """2 opts in to one resend, with the same Idempotency-Key, of a request that may be billed."""
    download_attempts: int = 3
    download_backoff: Backoff = Backoff(0.5, maximum=8.0)
    budget_tokens: float = 10.0
    budget_ratio: float = 0.1

    @classmethod
    def never(cls) -> RetryPolicy:
        """A policy that sends every request exactly once."""
        return cls(
            not_sent_attempts=1,
            throttled_attempts=1,
            server_attempts=1,
            outcome_unknown_attempts=1,
            download_attempts=1,
        )
