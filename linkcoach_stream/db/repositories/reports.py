"""Reports: the durable tier of the report cache, one row per user + cache key."""

from __future__ import annotations

import uuid

import asyncpg

from ...errors import NotFound

REPORT_COLUMNS = (
    "id, user_id, cache_key, leadership_type, leadership_code, scores, confidence, all_scores, "
    "report, sources, provider, model, prompt_version, kb_version, created_at, expires_at"
)


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
