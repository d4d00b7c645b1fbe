"""The command line's options for more than one process or relay: `--redis URL` (limits shared
through Redis) and `--endpoints FILE` (several relays or keys); read here so the commands stay
short.

An endpoints file is TOML, one `[[endpoints]]` table per relay; each names the environment
variable that holds its key, never the key::

    [[endpoints]]
    name = "relay-a"
    base_url = "https://relay-a.example.com"
    api_key_env = "RELAY_A_KEY"
    weight = 3                # optional: its share of the traffic (1)
    max_concurrency = 8       # optional: its own (else --concurrency)
    rpm = 120                 # optional: its own (else --rpm)
    dialect = "images"        # optional
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from ._exceptions import ConfigurationError
from ._limiter import SharedLimiter
from ._routing import Endpoint

__all__ = ["add_sharing_options", "endpoints_of", "limiter_of", "read_endpoints"]

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
    parser.add_argument(
        "--endpoints",
        metavar="FILE",
        type=Path,
        help="spread the jobs over the relays of this TOML file (each key read from the "
        "variable its api_key_env names), with failover; instead of --base-url and --api-key",
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


def endpoints_of(args: argparse.Namespace) -> list[Endpoint] | None:
    """The endpoints of --endpoints FILE, or None without it."""
    path: Path | None = getattr(args, "endpoints", None)
    if path is None:
        return None
    if args.base_url is not None or args.api_key is not None:
        raise ConfigurationError(
            "--endpoints names the relays and their keys: leave out --base-url and --api-key"
        )
    return read_endpoints(path, os.environ)


def read_endpoints(path: Path, environ: Mapping[str, str]) -> list[Endpoint]:
    """The `[[endpoints]]` of a TOML file; ConfigurationError naming the file for any fault."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigurationError(f"--endpoints {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"--endpoints {path}: not valid TOML ({error})") from None
    tables = doc.get("endpoints")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigurationError(
            f"--endpoints {path}: no [[endpoints]] tables (base_url, api_key_env, ...)"
        )
    try:
        return [Endpoint.from_table(table, environ) for table in tables]
    except (ConfigurationError, TypeError) as error:
        raise ConfigurationError(f"--endpoints {path}: {error}") from None
