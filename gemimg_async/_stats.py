"""What `client.stats` shows: the pool now, for a health endpoint or a dashboard."""

from __future__ import annotations

import attrs

__all__ = ["ClientStats", "EndpointStats"]


@attrs.frozen
class EndpointStats:
    """One endpoint of a client of several (`Client(endpoints=...)`)."""

    name: str
    max_concurrency: int
    limit: int
    in_flight: int
    waiting: int
    state: str
    """"closed" (in use), "open" (out, cooling down) or "half-open" (one probe may go)."""
    cooling_until: float | None
    """While open: the client clock's monotonic time a probe may go."""
    successes: int
    failures: int
    """Attempts that failed here (whatever the kind)."""

    @property
    def down(self) -> bool:
        return self.state != "closed"


@attrs.frozen
class ClientStats:
    """A snapshot of the client's pool."""

    max_concurrency: int
    limit: int
    """The in-flight limit now: below `max_concurrency` after the relay throttled."""
    in_flight: int
    waiting: int
    """Requests waiting for a place in the pool now."""
    pool_waits: int
    """Requests that have had to wait for a place, since the client was made."""
    rate_waits: int
    """Requests that have had to wait for the `rpm` limit."""
    retry_tokens: float
    """What is left of the retry budget; retries stop at half of `RetryPolicy.budget_tokens`."""
    endpoints: tuple[EndpointStats, ...] = ()
    """Each endpoint's, with `Client(endpoints=...)`; the fields above are their sums."""
