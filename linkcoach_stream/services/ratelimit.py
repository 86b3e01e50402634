"""Rate limits and per-user stream slots, shared by every instance through Redis.

- Token buckets run as one Lua script per check (atomic, one round trip): a key holds
  the tokens left and the last refill time; the script refills, takes one token or says
  how long until one is there.
- Stream slots are a sorted set per user (member = message id, score = lease expiry).
  Taking a slot drops expired leases first, so an instance that died with slots held
  cannot lock a user out for longer than one lease.
- A slot is a `StreamSlot` lease, handed by the turn to its generation job, which gives
  it back when it ends (`leases.py`).
- With no limits configured the service is given `NullLimiter`: same calls, nothing
  refused, so callers never ask whether there is a limiter.
- When Redis fails, the same limits run in this process's memory (logged, counted): a
  limit per instance is better than none, and a Redis outage must not become an outage
  of the API.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..errors import RateLimited
from ..tracing import part

log = logging.getLogger(__name__)

_BUCKET = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', key, 't', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + (now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', key, 't', tokens, 'ts', now)
redis.call('PEXPIRE', key, math.ceil((burst / rate) * 1000) + 1000)
return {allowed, tostring(wait)}
"""

_SLOT = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local member = ARGV[4]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZSCORE', key, member) then return 1 end
if redis.call('ZCARD', key) >= cap then return 0 end
redis.call('ZADD', key, now + lease, member)
redis.call('PEXPIRE', key, math.ceil(lease * 1000))
return 1
"""


@dataclass(frozen=True, slots=True)
class Limit:
    per_minute: float
    burst: int

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0


class StreamSlot:
    """One of a user's concurrent-stream slots; `release` is idempotent."""

    __slots__ = ("_limiter", "_released", "message_id", "user_id")

    def __init__(self, limiter: RateLimiter | None, *, user_id: str, message_id: str) -> None:
        self._limiter = limiter
        self.user_id = user_id
        self.message_id = message_id
        self._released = limiter is None

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        assert self._limiter is not None
        await self._limiter._release_stream(self.user_id, self.message_id)


class Limiter(Protocol):
    async def hit(self, scope: str, ident: str) -> None: ...

    async def acquire_stream(self, user_id: str, message_id: str) -> StreamSlot: ...


class NullLimiter:
    """No limits: every hit passes and every stream slot is free."""

    async def hit(self, scope: str, ident: str) -> None:
        return None

    async def acquire_stream(self, user_id: str, message_id: str) -> StreamSlot:
        return StreamSlot(None, user_id=user_id, message_id=message_id)


class RateLimiter:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        limits: dict[str, Limit],
        max_streams_per_user: int,
        stream_lease_s: float,
        metrics: object | None = None,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.limits = limits
        self.max_streams = max_streams_per_user
        self.lease_s = stream_lease_s
        self.metrics = metrics
        self._bucket = redis.register_script(_BUCKET)
        self._slot = redis.register_script(_SLOT)
        self._local_buckets: dict[str, tuple[float, float]] = {}
        self._local_slots: dict[str, dict[str, float]] = {}

    def _degraded(self) -> None:
        counter = getattr(self.metrics, "degraded", None)
        if counter is not None:
            counter.labels("redis").inc()

    def _rejected(self, scope: str) -> None:
        counter = getattr(self.metrics, "rate_limited", None)
        if counter is not None:
            counter.labels(scope).inc()

    async def hit(self, scope: str, ident: str) -> None:
        """Take one token from `scope`'s bucket for `ident`, or raise RateLimited."""
        limit = self.limits.get(scope)
        if limit is None or not limit.enabled:
            return
        key = f"{self.prefix}rl:{scope}:{ident}"
        now = time.time()
        try:
            with part("ratelimit", span=False):
                allowed, wait = await self._bucket(keys=[key], args=[limit.rate, limit.burst, now])
            ok, retry = bool(int(allowed)), float(wait)
        except (RedisError, OSError):
            self._degraded()
            ok, retry = self._local_hit(key, limit, now)
        if not ok:
            self._rejected(scope)
            raise RateLimited(
                f"too many requests ({scope}); retry in {retry:.1f}s", retry_after=retry
            )

    def _local_hit(self, key: str, limit: Limit, now: float) -> tuple[bool, float]:
        tokens, ts = self._local_buckets.get(key, (float(limit.burst), now))
        tokens = min(limit.burst, tokens + (now - ts) * limit.rate)
        if tokens >= 1:
            self._local_buckets[key] = (tokens - 1, now)
            return True, 0.0
        self._local_buckets[key] = (tokens, now)
        return False, (1 - tokens) / limit.rate

    async def acquire_stream(self, user_id: str, message_id: str) -> StreamSlot:
        """A stream slot for this message (or RateLimited when the user holds them all),
        to be released by whoever ends up owning it."""
        if self.max_streams <= 0:
            return StreamSlot(None, user_id=user_id, message_id=message_id)
        key = f"{self.prefix}slots:{user_id}"
        now = time.time()
        try:
            with part("ratelimit", span=False):
                taken = await self._slot(
                    keys=[key], args=[now, self.lease_s, self.max_streams, message_id]
                )
            ok = bool(int(taken))
        except (RedisError, OSError):
            self._degraded()
            slots = self._local_slots.setdefault(key, {})
            for member in [m for m, exp in slots.items() if exp <= now]:
                del slots[member]
            ok = message_id in slots or len(slots) < self.max_streams
            if ok:
                slots[message_id] = now + self.lease_s
        if not ok:
            self._rejected("streams")
            raise RateLimited(
                f"at most {self.max_streams} answers can stream at once per user",
                retry_after=1.0,
                code="too_many_streams",
            )
        return StreamSlot(self, user_id=user_id, message_id=message_id)

    async def _release_stream(self, user_id: str, message_id: str) -> None:
        if self.max_streams <= 0:
            return
        key = f"{self.prefix}slots:{user_id}"
        self._local_slots.get(key, {}).pop(message_id, None)
        try:
            await self.redis.zrem(key, message_id)
        except (RedisError, OSError):
            self._degraded()
            log.warning(
                "stream slot not released in redis; its lease will expire",
                extra={"user_id": user_id},
            )
