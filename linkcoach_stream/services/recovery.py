"""Recovery of answers whose producer died.

A message is `streaming` while a job on some instance generates it. When that instance
dies without a word (SIGKILL, OOM, a lost machine) nothing else would ever end the row,
so every instance sweeps, every `STREAM_SWEEP_INTERVAL`: the `streaming` rows idle for a
lease period (one query through the partial index on `streaming`), their producers'
leases in one MGET, and one UPDATE marking those without a lease `interrupted` with
`finish_reason: "stream_lost"`. Readers of such a stream end with `error` `stream_lost`
(`services/chat.py`); a cancel answers with the final status.

Decisions, and what not to "fix":
- Every instance sweeps; there is no leader. The statements are cheap, idempotent and
  guarded by `status = 'streaming'`, so two instances marking the same row is harmless.
- A row is only a candidate once idle for a lease period: a turn's row is stored a few
  milliseconds before its job's lease reaches Redis.
- Without Redis a slow producer and a dead one look the same, so the sweep does nothing
  until Redis answers again.
- If Redis loses its data (restarted empty), a producer waiting on a slow model could be
  marked until its next renewal (a third of a lease period); its final write still
  stores the true outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from ..db.repositories import conversations as repo
from .streams import StreamHub

log = logging.getLogger(__name__)

_BATCH = 500


class StreamSweeper:
    def __init__(self, pool: asyncpg.Pool, hub: StreamHub, *, interval_s: float) -> None:
        self._pool = pool
        self._hub = hub
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.create_task(self._run(), name="stream-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sweep(self) -> int:
        """Mark the `streaming` messages whose producer is gone; how many were marked."""
        idle_s = self._hub.lease_ttl_s
        async with self._pool.acquire() as conn:
            candidates = await repo.idle_streaming_ids(conn, idle_s=idle_s, limit=_BATCH)
        # A job of this process renews its own lease; no need to ask Redis about it.
        candidates = [m for m in candidates if self._hub.local_job(str(m)) is None]
        held = await self._hub.leases([str(m) for m in candidates])
        if held is None:
            return 0
        lost = [m for m, h in zip(candidates, held, strict=True) if not h]
        if not lost:
            return 0
        async with self._pool.acquire() as conn:
            marked = await repo.interrupt_lost_streams(conn, message_ids=lost, idle_s=idle_s)
        if marked:
            log.warning("answers of a stopped producer marked interrupted", extra={"count": marked})
        return marked

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - the sweeper must outlive any one failure
                log.warning("stream sweep failed; retrying next interval", exc_info=True)
            await asyncio.sleep(self._interval)
