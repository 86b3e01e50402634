"""Load shedding of query embeddings: when to rank a search on lexical signals alone.

Only used when the dense signal is switched on (`RAG_DENSE_WEIGHT` > 0). A search then
needs its query embedded, on the one embedding thread; when that thread is saturated,
ranking uses the lexical signals alone instead of making every answer's first chunk
wait in line or the embedding thread take the CPU the streams need. Saturated means:

- too many queries already wait for the embedding thread (`max_embed_queue`), or
- the embedder reports its CPU time and has used up its share of a core
  (`RAG_EMBED_CPU_SHARE`, a token bucket: `CpuBudget`), or
- this process is short of CPU: its event loop runs late
  (`RAG_EMBED_MAX_LOOP_LAG_MS`, measured by `LoopLag`).

The retriever owns the counters and these two gauges and asks `should_shed` before each
embedding; a shed search still answers, and is counted (`shed_searches`).
"""

from __future__ import annotations

import asyncio
import time


class CpuBudget:
    """A token bucket of CPU seconds: refills at `share` seconds per second, holds at
    most two seconds' worth, and is charged with the CPU time the embedder reports."""

    def __init__(self, share: float) -> None:
        self.share = share
        self._cap = 2.0 * share
        self._level = self._cap
        self._at = time.monotonic()
        self._seen: float | None = None

    def allows(self, cpu_seconds: float | None) -> bool:
        if self.share >= 1.0 or cpu_seconds is None:
            return True  # one thread cannot use more than a core anyway
        if self.share <= 0.0:
            return False
        now = time.monotonic()
        spent = 0.0 if self._seen is None else cpu_seconds - self._seen
        self._seen = cpu_seconds
        self._level = min(self._cap, self._level + (now - self._at) * self.share - spent)
        self._at = now
        return self._level > 0.0


class LoopLag:
    """How late this event loop runs: a timer every 50 ms notes its own delay; the
    figure rises at once and decays by a fifth per tick. Started on first use."""

    interval_s = 0.05

    def __init__(self) -> None:
        self._lag = 0.0
        self._task: asyncio.Task[None] | None = None

    def lag_s(self, loop: asyncio.AbstractEventLoop) -> float:
        if self._task is None:
            self._task = loop.create_task(self._watch(), name="loop-lag")
        return self._lag

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval_s)
            late = loop.time() - started - self.interval_s
            self._lag = max(late, self._lag * 0.8)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def should_shed(
    *,
    waiting: int,
    max_queue: int,
    budget: CpuBudget,
    cpu_seconds: float | None,
    lag: LoopLag | None,
    max_lag_s: float,
) -> bool:
    """Whether to skip embedding this query. `cpu_seconds` is the embedder's CPU time
    so far, None for an embedder that reports none (Gemini's API, the hashing test
    embedder): then only the queue length counts."""
    starved = (
        lag is not None
        and cpu_seconds is not None
        and lag.lag_s(asyncio.get_running_loop()) > max_lag_s
    )
    return starved or waiting >= max_queue or not budget.allows(cpu_seconds)
