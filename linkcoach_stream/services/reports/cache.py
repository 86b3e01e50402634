"""The two-tier report cache: Redis (hot) in front of Postgres (durable).

- Redis: `GET {prefix}report:{user}:{cache_key}`. The stored value is the finished
  response body with `"cached": true`, so a hit is one GET and no JSON work.
- Postgres: the user's unexpired row with that cache key; a hit warms Redis.

Deliberate decisions (do not "fix"):

- Redis is an accelerator, never a dependency: every Redis failure is logged (at most
  every few seconds), counted in `linkcoach_degraded_total{service="redis"}` and skipped.
- The hot copy never outlives the row: its TTL is the smaller of
  `REPORT_CACHE_TTL_S` and the row's remaining life.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ...config import Settings
from ...db.repositories import reports as repo
from ...errors import ServiceUnavailable
from ...metrics import Metrics
from .inputs import ReportInputs

log = logging.getLogger(__name__)

_REDIS_LOG_EVERY_S = 10.0
DB_DOWN = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


@dataclass(frozen=True, slots=True)
class ReportResult:
    """A report response. `raw` is the Redis copy, already rendered with `cached: true`."""

    cached: bool
    data: dict[str, Any] | None = None
    raw: bytes | None = None

    def body(self) -> bytes:
        if self.raw is not None:
            return self.raw
        assert self.data is not None
        return dumps({**self.data, "cached": self.cached})

    def as_dict(self) -> dict[str, Any]:
        if self.data is not None:
            return {**self.data, "cached": self.cached}
        assert self.raw is not None
        loaded: dict[str, Any] = orjson.loads(self.raw)
        return loaded


def report_body(row: asyncpg.Record | Mapping[str, Any]) -> dict[str, Any]:
    """The response body for a stored report, without `cached`."""
    body: dict[str, Any] = {
        "report_id": str(row["id"]),
        "leadership_type": row["leadership_type"],
        "leadership_code": row["leadership_code"],
        "scores": row["scores"],
    }
    if row["confidence"] is not None:
        body["confidence"] = row["confidence"]
        body["all_scores"] = row["all_scores"]
    body.update(
        report=row["report"],
        sources=row["sources"],
        provider=row["provider"],
        model=row["model"],
        prompt_version=row["prompt_version"],
        kb_version=row["kb_version"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )
    return body


class ReportCache:
    def __init__(
        self, *, settings: Settings, pool: asyncpg.Pool, redis: Redis, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.metrics = metrics
        self._redis_logged_at = 0.0

    def hot_key(self, inputs: ReportInputs) -> str:
        return f"{self.settings.redis_prefix}report:{inputs.user_id}:{inputs.cache_key}"

    def lock_key(self, inputs: ReportInputs) -> str:
        return f"{self.settings.redis_prefix}report-lock:{inputs.user_id}:{inputs.cache_key}"

    def redis_failed(self, op: str, exc: BaseException) -> None:
        self.metrics.degraded.labels("redis").inc()
        now = time.monotonic()
        if now - self._redis_logged_at >= _REDIS_LOG_EVERY_S:
            self._redis_logged_at = now
            log.warning(
                "redis unavailable for the report cache; serving from Postgres",
                extra={"op": op, "error": f"{type(exc).__name__}: {exc}"[:200]},
            )

    async def hot_get(self, inputs: ReportInputs, *, count: bool) -> bytes | None:
        try:
            value = await self.redis.get(self.hot_key(inputs))
        except (RedisError, OSError) as exc:
            self.redis_failed("get", exc)
            if count:
                self.metrics.cache.labels("redis", "error").inc()
            return None
        if count:
            self.metrics.cache.labels("redis", "hit" if value else "miss").inc()
        return value.encode() if isinstance(value, str) else value

    async def hot_set(self, inputs: ReportInputs, data: dict[str, Any]) -> None:
        remaining = (data["expires_at"] - datetime.now(UTC)).total_seconds()
        ttl_ms = int(min(self.settings.report_cache_ttl_s, remaining) * 1000)
        if ttl_ms <= 0:
            return
        try:
            await self.redis.set(self.hot_key(inputs), dumps({**data, "cached": True}), px=ttl_ms)
        except (RedisError, OSError) as exc:
            self.redis_failed("set", exc)

    async def lookup(self, inputs: ReportInputs, *, count: bool) -> ReportResult | None:
        """Redis, then Postgres (warming Redis); `count` records hits and misses."""
        raw = await self.hot_get(inputs, count=count)
        if raw is not None:
            return ReportResult(cached=True, raw=raw)
        try:
            async with self.pool.acquire() as conn:
                row = await repo.find_fresh(
                    conn, user_id=inputs.user_id, cache_key=inputs.cache_key
                )
        except DB_DOWN as exc:
            raise ServiceUnavailable("report storage is unavailable") from exc
        if count:
            self.metrics.cache.labels("postgres", "miss" if row is None else "hit").inc()
        if row is None:
            return None
        data = report_body(row)
        await self.hot_set(inputs, data)
        return ReportResult(cached=True, data=data)
