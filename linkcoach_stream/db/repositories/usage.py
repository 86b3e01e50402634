"""Per-user daily usage: one row per (user, day), added to by every finished turn and
every generated report. The day is the database clock's date in the configured zone, so
every instance agrees on it."""

from __future__ import annotations

from datetime import date

import asyncpg

from ...llm.base import Usage

ADD_TO_DAY = """
    ON CONFLICT (user_id, day) DO UPDATE SET
        turns = usage_daily.turns + EXCLUDED.turns,
        estimated_turns = usage_daily.estimated_turns + EXCLUDED.estimated_turns,
        reports = usage_daily.reports + EXCLUDED.reports,
        prompt_tokens = usage_daily.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = usage_daily.completion_tokens + EXCLUDED.completion_tokens,
        cached_tokens = usage_daily.cached_tokens + EXCLUDED.cached_tokens,
        thought_tokens = usage_daily.thought_tokens + EXCLUDED.thought_tokens,
        updated_at = now()
"""


async def record_report(
    conn: asyncpg.Connection, *, user_id: str, usage: Usage, timezone: str
) -> None:
    await conn.execute(
        f"""
        INSERT INTO usage_daily (user_id, day, reports, prompt_tokens, completion_tokens,
                                 cached_tokens, thought_tokens)
        VALUES ($1, (now() AT TIME ZONE $2)::date, 1, $3, $4, $5, $6)
        {ADD_TO_DAY}
        """,
        user_id,
        timezone,
        usage.prompt_tokens or 0,
        usage.completion_tokens or 0,
        usage.cached_tokens or 0,
        usage.thought_tokens or 0,
    )


async def spent_today(conn: asyncpg.Connection, *, user_id: str, timezone: str) -> int:
    """Tokens the daily budget counts (prompt + completion + thoughts) for today."""
    value = await conn.fetchval(
        """
        SELECT prompt_tokens + completion_tokens + thought_tokens FROM usage_daily
        WHERE user_id = $1 AND day = (now() AT TIME ZONE $2)::date
        """,
        user_id,
        timezone,
    )
    return int(value or 0)


async def daily(
    conn: asyncpg.Connection, *, user_id: str, start: date, end: date
) -> list[asyncpg.Record]:
    """The user's days within [start, end] that have any usage, oldest first."""
    return await conn.fetch(
        """
        SELECT day, turns, estimated_turns, reports, prompt_tokens, completion_tokens,
               cached_tokens, thought_tokens
        FROM usage_daily WHERE user_id = $1 AND day BETWEEN $2 AND $3
        ORDER BY day
        """,
        user_id,
        start,
        end,
    )


async def today(conn: asyncpg.Connection, *, timezone: str) -> date:
    value: date = await conn.fetchval("SELECT (now() AT TIME ZONE $1)::date", timezone)
    return value
