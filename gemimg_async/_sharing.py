"""The command line's options for more than one process or relay: `--redis URL` (limits shared
through Redis); read here so the commands stay short.
"""

from __future__ import annotations

import argparse

from ._exceptions import ConfigurationError
from ._limiter import SharedLimiter

__all__ = ["add_sharing_options", "limiter_of"]

REDIS_MISSING = (
    "--redis needs the redis package: pip install 'gemimg-async[redis]' (or leave --redis out)"
)


def add_sharing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="share --concurrency and --rpm through Redis with every process using the same "
        "relay and key (redis://host:6379/0; needs gemimg-async[redis])",
    )


def limiter_of(args: argparse.Namespace) -> SharedLimiter | None:
    """The shared limiter the options ask for: a RedisLimiter for --redis, else None."""
    url: str | None = getattr(args, "redis", None)
    if url is None:
        return None
    from .redis import RedisLimiter  # noqa: PLC0415 - the optional extra, only when asked

    try:
        return RedisLimiter(url)
    except ConfigurationError as error:
        if isinstance(error.__cause__, ImportError):
            raise ConfigurationError(REDIS_MISSING) from None
        raise ConfigurationError(f"--redis: {error}") from None
