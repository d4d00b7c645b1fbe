"""The Redis side of `RedisLimiter`: the connection, what it stores, the Lua scripts that change
it atomically, and the ONE place where redis-py's errors become ours.

Per endpoint key, under `{prefix}:{<key>}:` (the braces keep one key's names in one cluster slot):

- `leases`, a sorted set: one member per place held, scored by when it expires (server time, ms).
  A lease that is not renewed before then is dropped by the next script that looks, so a process
  killed with -9 gives its places back within the lease TTL.
- `rate`, a string: the generic cell rate algorithm's "theoretical arrival time" (server time,
  microseconds), the moment the start bucket will be full again given the starts reserved so far.
- `peers`, a sorted set: the limiter instances using the key, scored by when they stop counting;
  read to size the local share when Redis becomes unreachable.

Every script reads the time with Redis's own TIME, so the clocks of the machines sharing the
limit never matter. `redis` is imported when a `Store` is made, not with this module.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import yarl

from ._exceptions import ConfigurationError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Grant", "Names", "Store", "UnreachableError", "redacted"]


class UnreachableError(Exception):
    """Redis did not answer, or could not serve the call (the cause is chained)."""


def redacted(url: str) -> str:
    """`url` without its user and password."""
    try:
        return str(yarl.URL(url).with_user(None))
    except (TypeError, ValueError):
        return "<unparsable URL>"


# Redis before 5 needs effects replication switched on to write after TIME; later versions
# replicate effects always and keep the call as a no-op.
_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local function keep(name, ttl)
  if redis.call('PTTL', name) < ttl then redis.call('PEXPIRE', name, ttl) end
end
local function count_peers(peers, instance, ttl)
  redis.call('ZREMRANGEBYSCORE', peers, '-inf', now)
  redis.call('ZADD', peers, now + ttl, instance)
  keep(peers, ttl)
  return redis.call('ZCARD', peers)
end
"""

# KEYS: leases, peers. ARGV: token, max_concurrency, ttl_ms, instance.
# -> {1, 0, peers} granted; {0, ms until the first lease expires, peers} full.
_ACQUIRE = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local peers = count_peers(KEYS[2], ARGV[4], ttl)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  keep(KEYS[1], ttl)
  return {1, 0, peers}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(first[2]) - now, peers}
"""
)

# KEYS: leases, peers. ARGV: ttl_ms, instance, token... -> {peers, each token that had lapsed}.
# Every lease still held is written back, a lapsed one too (a stall longer than the TTL, Redis
# restarted empty, or held through an outage): the set counts the places really taken, even if
# that is briefly more than the limit, and newcomers wait until it is below.
_RENEW = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local answer = {count_peers(KEYS[2], ARGV[2], ttl)}
for i = 3, #ARGV do
  if redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) == 1 then answer[#answer + 1] = ARGV[i] end
end
if #ARGV > 2 then keep(KEYS[1], ttl) end
return answer
"""
)

# KEYS: leases. ARGV: token, channel, key. Waiters in every process hear of the freed place.
_RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# KEYS: rate. ARGV: interval_us, burst. -> microseconds to wait for the start it reserves.
_RESERVE = (
    _PRELUDE
    + """
local interval = tonumber(ARGV[1])
local full = tonumber(redis.call('GET', KEYS[1]) or 0)
if full < now_us then full = now_us end
local start = full - interval * (tonumber(ARGV[2]) - 1)
if start < now_us then start = now_us end
local later = full + interval
redis.call('SET', KEYS[1], string.format('%.0f', later), 'PX',
  math.ceil((later - now_us) / 1000) + 1)
return start - now_us
"""
)


@attrs.frozen
class Names:
    """The Redis names of one endpoint key."""

    leases: str
    peers: str
    rate: str

    @classmethod
    def of(cls, prefix: str, key: str) -> Names:
        tag = f"{prefix}:{{{key}}}"
        return cls(f"{tag}:leases", f"{tag}:peers", f"{tag}:rate")


@attrs.frozen
class Grant:
    """What an attempt at a place found."""

    granted: bool
    retry_in: float
    """Seconds until the oldest lease expires, when none was free."""
    peers: int
    """Limiter instances using the key now, this one included."""


@attrs.define
class Store:
    """One limiter's connection to Redis and its scripts (EVALSHA, loaded again when missing).

    Every call raises `UnreachableError` when Redis cannot serve it, and `ConfigurationError`
    when Redis refuses the credentials or the commands.
    """

    url: str = attrs.field(repr=lambda url: repr(redacted(url)))
    prefix: str
    timeout: float
    _client: Redis = attrs.field(init=False, repr=False)
    _errors: Any = attrs.field(init=False, repr=False)
    _scripts: dict[str, Any] = attrs.field(init=False, repr=False)
    _names: dict[str, Names] = attrs.field(init=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        try:
            import redis.asyncio  # noqa: PLC0415 - an optional extra, loaded only when used
            from redis.asyncio.retry import Retry  # noqa: PLC0415
            from redis.backoff import ExponentialWithJitterBackoff  # noqa: PLC0415
        except ImportError as exc:
            raise ConfigurationError(
                "RedisLimiter needs the redis package: pip install 'gemimg-async[redis]'"
            ) from exc
        try:
            self._client = redis.asyncio.Redis.from_url(
                self.url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                # one quick retry, on a fresh connection after Redis restarted; no long backoff
                retry=Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.02), retries=1),
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"not a Redis URL: {self.where} (redis://, rediss:// or unix://)"
            ) from exc
        self._errors = redis.exceptions
        scripts = {"acquire": _ACQUIRE, "renew": _RENEW, "release": _RELEASE, "reserve": _RESERVE}
        self._scripts = {name: self._client.register_script(text) for name, text in scripts.items()}

    @property
    def where(self) -> str:
        """The URL without its password, as logs and errors show it."""
        return redacted(self.url)

    @property
    def channel(self) -> str:
        """Where releases are announced; each message is the key of the freed place."""
        return f"{self.prefix}:released"

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        errors = self._errors
        try:
            yield
        except (
            errors.AuthenticationError,
            errors.AuthorizationError,
            errors.NoPermissionError,
        ) as exc:
            raise ConfigurationError(f"Redis at {self.where} refused the limiter: {exc}") from exc
        except (errors.RedisError, OSError) as exc:
            raise UnreachableError(f"{type(exc).__name__}: {exc}") from exc

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        with self._mapped():
            return await self._scripts[script](keys=keys, args=args)

    def names(self, key: str) -> Names:
        names = self._names.get(key)
        if names is None:
            names = self._names[key] = Names.of(self.prefix, key)
        return names

    async def acquire(self, key: str, token: str, maximum: int, ttl: float, instance: str) -> Grant:
        """Take a place for `token` if fewer than `maximum` are held."""
        names = self.names(key)
        granted, wait_ms, peers = await self._run(
            "acquire", [names.leases, names.peers], [token, maximum, _ms(ttl), instance]
        )
        return Grant(bool(granted), max(int(wait_ms), 0) / 1000, int(peers))

    async def renew(
        self, key: str, tokens: list[str], ttl: float, instance: str
    ) -> tuple[int, set[str]]:
        """Write the `tokens` back with a fresh TTL; (peers, the tokens that had lapsed)."""
        names = self.names(key)
        peers, *lapsed = await self._run(
            "renew", [names.leases, names.peers], [_ms(ttl), instance, *tokens]
        )
        return int(peers), {token.decode() for token in lapsed}

    async def release(self, key: str, token: str) -> bool:
        """Free `token`'s place and announce it; False if it was not held (or had expired)."""
        names = self.names(key)
        return bool(await self._run("release", [names.leases], [token, self.channel, key]))

    async def reserve(self, key: str, rpm: float, burst: int) -> float:
        """Reserve the next start; the seconds to wait for it."""
        interval_us = math.ceil(60_000_000 / rpm)  # rounded up: never faster than asked
        wait = await self._run("reserve", [self.names(key).rate], [interval_us, burst])
        return max(int(wait), 0) / 1_000_000

    async def leave(self, key: str, instance: str) -> None:
        """Stop counting `instance` among the key's peers."""
        with self._mapped():
            await self._client.zrem(self.names(key).peers, instance)

    async def ping(self) -> None:
        with self._mapped():
            await self._client.ping()

    async def releases(self, poll: float) -> AsyncGenerator[str, None]:
        """The key of each place freed by any process, as announced; ends only by an error."""
        with self._mapped():
            async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(timeout=poll)
                    if message is not None and message.get("type") == "message":
                        yield message["data"].decode()

    async def aclose(self) -> None:
        with contextlib.suppress(UnreachableError), self._mapped():
            await self._client.aclose()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
