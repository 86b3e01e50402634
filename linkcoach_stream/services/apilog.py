"""API request log: a bounded in-memory queue drained to Postgres in batches.

A request only ever does `put_nowait`; when the queue is full the entry is dropped and
counted, so a slow or down database never slows a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from ..db.repositories import api_logs
from ..db.repositories.api_logs import ApiLogEntry

__all__ = ["ApiLogEntry", "ApiLogWriter"]

log = logging.getLogger(__name__)


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
                await api_logs.insert_api_logs(conn, entries=batch)
            self.written += len(batch)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            self.dropped += len(batch)
            log.warning("api log batch dropped", extra={"count": len(batch)}, exc_info=True)
