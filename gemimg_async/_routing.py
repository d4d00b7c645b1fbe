"""Where a client's requests go, and under which limits: its key checked, and the pool of each
endpoint built from the client's arguments (in-process, or behind a shared limiter).
"""

from __future__ import annotations

import os

from ._clock import Clock
from ._exceptions import ConfigurationError
from ._limiter import SharedLimiter, check_limits, endpoint_key
from ._limits import AdaptiveLimit, Pool, RateLimit, Shared, check_pool_timeout

__all__ = ["ENV_API_KEY", "ENV_BASE_URL", "checked_key", "checked_url", "make_pool"]

ENV_API_KEY = "GEMIMG_API_KEY"
ENV_BASE_URL = "GEMIMG_BASE_URL"


def checked_key(api_key: str | None) -> str:
    """The API key given, or GEMIMG_API_KEY's; ConfigurationError for none or a mangled one."""
    api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
    if not api_key:
        raise ConfigurationError(f"no API key: pass api_key= or set {ENV_API_KEY}")
    if api_key != api_key.strip() or any(c in api_key for c in "\r\n\t "):
        raise ConfigurationError("the API key contains whitespace: check how it was pasted")
    return api_key


def checked_url(base_url: str | None) -> str:
    """The relay's URL given, or GEMIMG_BASE_URL's."""
    base_url = base_url if base_url is not None else os.environ.get(ENV_BASE_URL)
    if not base_url:
        raise ConfigurationError(
            f"no relay: pass base_url= (such as 'https://api.example.com') or set {ENV_BASE_URL}"
        )
    return base_url


def make_pool(
    *,
    max_concurrency: int,
    rpm: float | None,
    clock: Clock,
    pool_timeout: float | None,
    limiter: SharedLimiter | None,
    base_url: str,
    api_key: str,
) -> Pool:
    """An endpoint's pool: its in-flight limit, and its rate in this process or, with a
    `limiter`, shared with every process using the same endpoint (its key names it)."""
    limit = AdaptiveLimit(max_concurrency)
    timeout = check_pool_timeout(pool_timeout)
    if limiter is None:
        rate = RateLimit(rpm, clock) if rpm is not None else None
        return Pool(limit, rate, clock=clock, timeout=timeout)
    if not isinstance(limiter, SharedLimiter):
        raise ConfigurationError(
            f"limiter= takes a gi.LocalLimiter or gi.RedisLimiter, not {limiter!r:.60}"
        )
    check_limits(rpm=rpm)
    shared = Shared(limiter, endpoint_key(base_url, api_key))
    return Pool(limit, shared=shared, clock=clock, timeout=timeout, rpm=rpm)
