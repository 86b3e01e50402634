"""The API request log (`api_logs`), written in batches by `services/apilog.py`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True, slots=True)
class ApiLogEntry:
    ts: datetime
    request_id: str | None
    user_id: str | None
    method: str
    endpoint: str
    status: int
    duration_ms: float
    client_ip: str | None
    error: str | None


async def insert_api_logs(conn: asyncpg.Connection, *, entries: Sequence[ApiLogEntry]) -> None:
    """The whole batch in one statement (a column array each)."""
    await conn.execute(
        """
        INSERT INTO api_logs (ts, request_id, user_id, method, endpoint, status,
                              duration_ms, client_ip, error)
        SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[],
                             $5::text[], $6::integer[], $7::double precision[], $8::text[],
                             $9::text[])
        """,
        [e.ts for e in entries],
        [e.request_id for e in entries],
        [e.user_id for e in entries],
        [e.method for e in entries],
        [e.endpoint for e in entries],
        [e.status for e in entries],
        [e.duration_ms for e in entries],
        [e.client_ip for e in entries],
        [e.error for e in entries],
    )
