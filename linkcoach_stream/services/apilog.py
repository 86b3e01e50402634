"""API request log: a bounded in-memory queue drained to Postgres in batches.

A request only ever does `put_nowait`; when the queue is full the entry is dropped and
counted, so a slow or down database never slows a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime

import asyncpg

log = logging.getLogger(__name__)


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


class ApiLogWriter:
    def __init__(
        self, pool: asyncpg.Pool, *, max_queue: int, batch_size: int, flush_interval_s: float
    ) -> None:
        self._pool = pool
        self._queue: asyncio.Queue[ApiLogEntry] = asyncio.Queue(maxsize=max_queue)
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.written = 0

    def submit(self, entry: ApiLogEntry) -> None:
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.dropped += 1

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="api-log-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def flush(self) -> int:
        batch: list[ApiLogEntry] = []
        while not self._queue.empty() and len(batch) < self._batch_size * 10:
            batch.append(self._queue.get_nowait())
        if batch:
            await self._write(batch)
        return len(batch)

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            # Give a burst a moment to arrive so it lands in one round trip.
            await asyncio.sleep(self._interval)
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)

    async def _write(self, batch: list[ApiLogEntry]) -> None:
        try:
            async with self._pool.acquire() as conn:
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
                        for e in batch
                    ],
                )
            self.written += len(batch)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            self.dropped += len(batch)
            log.warning("api log batch dropped", extra={"count": len(batch)}, exc_info=True)
