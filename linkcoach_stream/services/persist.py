"""Batched persistence of partial answers.

Streams mark their message dirty with the list of chunks so far (joined only when
written, not on every chunk); one task writes every dirty message in a single
statement per interval. Postgres sees a few statements per
second however many streams run, never one per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import asyncpg

from ..db.repositories import conversations as repo

log = logging.getLogger(__name__)


class PartialWriter:
    def __init__(self, pool: asyncpg.Pool, *, interval_s: float) -> None:
        self._pool = pool
        self._interval = interval_s
        self._dirty: dict[uuid.UUID, list[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self.batches = 0

    def mark(self, message_id: uuid.UUID, parts: list[str]) -> None:
        """`parts` is the stream's own growing list; the latest text is written."""
        self._dirty[message_id] = parts

    def forget(self, message_id: uuid.UUID) -> None:
        self._dirty.pop(message_id, None)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="partial-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def flush(self) -> None:
        if not self._dirty:
            return
        batch, self._dirty = self._dirty, {}
        try:
            async with self._pool.acquire() as conn:
                await repo.write_partial_answers(
                    conn, texts=[(key, "".join(parts)) for key, parts in batch.items()]
                )
            self.batches += 1
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            # Put the texts back unless a newer one arrived meanwhile; retry next round.
            for key, value in batch.items():
                self._dirty.setdefault(key, value)
            log.warning("partial answers not persisted yet", extra={"count": len(batch)})

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()
