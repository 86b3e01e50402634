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
    await conn.executemany(
        """
        INSERT INTO api_logs (ts, request_id, user_id, method, endpoint, status,
                              duration_ms, client_ip, error)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        """,
        [
            (
                e.ts,
                e.request_id,
                e.user_id,
                e.method,
                e.endpoint,
                e.status,
                e.duration_ms,
                e.client_ip,
                e.error,
            )
            for e in entries
        ],
    )
