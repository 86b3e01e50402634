"""Helpers shared by the report tests: assessment builders and direct Redis/Postgres access."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from linkcoach_stream.config import Settings
from linkcoach_stream.db.migrate import apply_migrations
from linkcoach_stream.db.pool import create_pool
from linkcoach_stream.domain.assessment_items import ITEMS

INTERPRET = "/api/v1/coaching/interpretation"


def answers_at(sharing: int, interaction: int, growth: int) -> dict[str, int]:
    """A respondent agreeing at the given level, answering reverse items consistently."""
    level = {"공유": sharing, "상호작용": interaction, "성장": growth}
    return {i.id: 7 - level[i.dimension] if i.reverse else level[i.dimension] for i in ITEMS}


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.redis_url or "")
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(settings.database_url or "", min_size=1, max_size=5)
    async with p.acquire() as conn:
        await apply_migrations(conn)  # idempotent; the server fixture may not have run yet
    try:
        yield p
    finally:
        await p.close()


async def drop_hot_copies(redis: aioredis.Redis, settings: Settings, user_id: str) -> int:
    keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}report:{user_id}:*")]
    if keys:
        await redis.delete(*keys)
    return len(keys)
