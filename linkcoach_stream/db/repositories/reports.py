"""Reports: the durable tier of the report cache, one row per user + cache key."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg

from ...errors import Conflict, NotFound

REPORT_COLUMNS = (
    "id, user_id, cache_key, leadership_type, leadership_code, scores, confidence, all_scores, "
    "report, sources, provider, model, prompt_version, kb_version, created_at, expires_at"
)


_UPSERT = f"""
INSERT INTO reports (id, user_id, cache_key, leadership_type, leadership_code, scores,
                     confidence, all_scores, report, sources, provider, model,
                     prompt_version, kb_version, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, now(), now() + $15)
ON CONFLICT (user_id, cache_key) DO UPDATE SET
    leadership_type = EXCLUDED.leadership_type,
    leadership_code = EXCLUDED.leadership_code,
    scores = EXCLUDED.scores,
    confidence = EXCLUDED.confidence,
    all_scores = EXCLUDED.all_scores,
    report = EXCLUDED.report,
    sources = EXCLUDED.sources,
    provider = EXCLUDED.provider,
    model = EXCLUDED.model,
    prompt_version = EXCLUDED.prompt_version,
    kb_version = EXCLUDED.kb_version,
    created_at = EXCLUDED.created_at,
    expires_at = EXCLUDED.expires_at
WHERE reports.expires_at <= now()
RETURNING {REPORT_COLUMNS}
"""


async def get_report(
    conn: asyncpg.Connection, *, report_id: uuid.UUID, user_id: str
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {REPORT_COLUMNS} FROM reports WHERE id = $1 AND user_id = $2",
        report_id,
        user_id,
    )
    if row is None:
        raise NotFound("report not found")
    return row


async def find_fresh(
    conn: asyncpg.Connection, *, user_id: str, cache_key: str
) -> asyncpg.Record | None:
    """The unexpired report for this user and cache key, if any."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {REPORT_COLUMNS} FROM reports "
        "WHERE user_id = $1 AND cache_key = $2 AND expires_at > now()",
        user_id,
        cache_key,
    )
    return row


async def store_report(
    conn: asyncpg.Connection,
    *,
    report_id: uuid.UUID,
    user_id: str,
    cache_key: str,
    leadership_type: str,
    leadership_code: str,
    scores: dict[str, float] | None,
    confidence: float | None,
    all_scores: dict[str, float] | None,
    report: dict[str, Any],
    sources: list[dict[str, Any]],
    provider: str,
    model: str | None,
    prompt_version: str,
    kb_version: str,
    ttl: timedelta,
) -> tuple[asyncpg.Record, bool]:
    """Insert a report, or refresh an *expired* row with the same key in place; returns the
    row and whether it is the one written by this call.

    A fresh row with the same key is never overwritten: when two writers race (Redis
    down, so no cross-process lock), the first one wins and the second gets the winner's
    row back, so every caller ends up with the same report id. A refreshed row keeps its
    id because conversations may point at it.
    """
    for _ in range(3):
        row: asyncpg.Record | None = await conn.fetchrow(
            _UPSERT,
            report_id,
            user_id,
            cache_key,
            leadership_type,
            leadership_code,
            scores,
            confidence,
            all_scores,
            report,
            sources,
            provider,
            model,
            prompt_version,
            kb_version,
            ttl,
        )
        if row is not None:
            return row, True
        row = await find_fresh(conn, user_id=user_id, cache_key=cache_key)
        if row is not None:
            return row, False
        # The fresh row expired between the two statements: the next upsert refreshes it.
    raise Conflict("report was replaced concurrently; retry")
