"""The generation job of a turn, in three steps: the provider is read and its chunks are
joined by a `Coalescer` into `delta` events; the way the read ended is classified into an
`Ending` (a cancel with its reason, a timeout, a provider or internal failure, logged
with its traceback); one `_finalize` step stores the message and its usage and emits the
terminal event. A cancelled job is finalized too, then ends cancelled.

`ChatService` (turns) and `answers` (regenerations) start it through
`ChatService.start_generation`; the provider is looked up at each run, so swapping the
service's provider takes effect for the next answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg

from ..config import Settings
from ..db.repositories import conversations as repo
from ..llm.base import ChatPrompt, LLMError, LLMProvider, StreamResult, Usage
from ..metrics import Metrics
from ..tracing import GenerationTrace, part, snapshot_ms
from . import events as ev
from .events import GENERATION_FAILED, PROVIDER_FAILED
from .persist import PartialWriter
from .streams import CancelReason, Job
from .usage import billed_usage

if TYPE_CHECKING:
    from .chat import TurnStarted

log = logging.getLogger("linkcoach_stream.services.chat")


class Coalescer:
    """Joins the provider's chunks into `delta` events at most one per `interval_s`
    (COALESCE_MS): a chunk after a quiet interval goes out at once, the ones that follow
    it within the interval wait for a timer and leave together."""

    def __init__(self, job: Job, *, interval_s: float) -> None:
        self._job = job
        self._interval_s = interval_s
        self._pending: list[str] = []
        self._last_emit = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, chunk: str, now: float) -> None:
        self._pending.append(chunk)
        if now - self._last_emit >= self._interval_s:
            self.flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._interval_s - (now - self._last_emit), self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending and not self._job.finished:
            text = "".join(self._pending)
            self._pending.clear()
            self._job.emit(ev.delta(text))
            self._last_emit = time.perf_counter()

    def close(self) -> None:
        """Send what is still pending and drop the timer: the terminal event follows."""
        self.flush()


@dataclass(slots=True)
class _Progress:
    """What one generation has produced so far."""

    job: Job
    coalescer: Coalescer
    trace: GenerationTrace
    result: StreamResult = field(default_factory=StreamResult)
    parts: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)
    first_at: float | None = None
    last_chunk_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True, slots=True)
class Ending:
    """How a generation ended, as stored and as its terminal event says."""

    status: str  # complete | interrupted | error
    finish_reason: str
    error_code: str | None = None
    error_message: str = ""
    cancel_reason: CancelReason | None = None

    @classmethod
    def cancelled(cls, reason: CancelReason) -> Ending:
        return cls("interrupted", "cancelled", cancel_reason=reason)


class Generation:
    """Writes one answer: read, classify the ending, finalize (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        partials: PartialWriter,
        metrics: Metrics,
        provider: Callable[[], LLMProvider],
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.partials = partials
        self.metrics = metrics
        self._provider = provider

    @property
    def provider(self) -> LLMProvider:
        return self._provider()

    async def run(self, job: Job, *, started: TurnStarted, prompt: ChatPrompt) -> None:
        """Read the provider, then finalize: store the message and emit its end. A
        cancelled job is finalized too, then ends cancelled."""
        provider = self.provider.name
        job.emit(
            ev.meta(
                conversation_id=started.conversation_id,
                message_id=started.message_id,
                sources=started.sources,
                provider=provider,
                model=self.provider.model,
                extra=started.meta,
                timings=snapshot_ms(),
            )
        )
        progress = _Progress(
            job=job,
            coalescer=Coalescer(job, interval_s=self.settings.coalesce_ms / 1000),
            trace=GenerationTrace(
                provider=provider, model=self.provider.model, message_id=started.message_id
            ),
        )
        self.metrics.active_generations.inc()
        cancelled: asyncio.CancelledError | None = None
        try:
            await self._read(progress, message_id=uuid.UUID(started.message_id), prompt=prompt)
            ending = Ending("complete", progress.result.finish_reason or "stop")
        except asyncio.CancelledError as exc:
            cancelled = exc
            ending = Ending.cancelled(job.cancel_reason or CancelReason.SHUTDOWN)
        except Exception as exc:  # noqa: BLE001 - a job must always end with an event
            ending = self._failed(exc, started=started)
        finally:
            self.metrics.active_generations.dec()
        await self._finalize(progress, started=started, prompt=prompt, ending=ending)
        if cancelled is not None:
            raise cancelled

    async def _read(
        self, progress: _Progress, *, message_id: uuid.UUID, prompt: ChatPrompt
    ) -> None:
        """Stream the provider's answer into the coalescer, measuring as it comes."""
        provider = self.provider.name
        stall_s = 2 * self.settings.expected_chunk_gap_ms / 1000
        # Looked up once, not per chunk (`labels()` takes a lock and builds a key).
        gaps = self.metrics.chunk_gap_seconds.labels(provider)
        async with asyncio.timeout(self.settings.llm_total_timeout_s):
            async for chunk in self.provider.stream(prompt, progress.result):
                now = time.perf_counter()
                if progress.first_at is None:
                    progress.first_at = now
                    self.metrics.ttft_seconds.labels(provider).observe(now - progress.t0)
                    progress.trace.first_chunk(now - progress.t0)
                else:
                    gap = now - progress.last_chunk_at
                    gaps.observe(gap)
                    if gap > stall_s:
                        self.metrics.chunk_stalls.labels(provider).inc()
                progress.last_chunk_at = now
                progress.parts.append(chunk)
                self.partials.mark(message_id, progress.parts)
                progress.coalescer.add(chunk, now)

    def _failed(self, exc: Exception, *, started: TurnStarted) -> Ending:
        """Classify a failed read (metrics, a log line with its traceback)."""
        provider = self.provider.name
        extra = {"message_id": started.message_id, "provider": provider}
        if isinstance(exc, TimeoutError):
            self.metrics.llm_errors.labels(provider, "total_timeout").inc()
            log.warning("answer stopped by LLM_TOTAL_TIMEOUT", extra=extra, exc_info=exc)
            return Ending(
                "error",
                "timeout",
                error_code="llm_timeout",
                error_message="the answer took too long and was stopped",
                cancel_reason=CancelReason.TIMEOUT,
            )
        if isinstance(exc, LLMError):
            self.metrics.llm_errors.labels(provider, exc.kind).inc()
            log.warning(
                "provider failed during an answer",
                extra={**extra, "kind": exc.kind},
                exc_info=exc,
            )
            return Ending("error", "error", error_code="llm_error", error_message=PROVIDER_FAILED)
        self.metrics.llm_errors.labels(provider, "internal").inc()
        log.error("answer generation failed", extra=extra, exc_info=exc)
        return Ending(
            "error", "error", error_code="internal_error", error_message=GENERATION_FAILED
        )

    async def _finalize(
        self, progress: _Progress, *, started: TurnStarted, prompt: ChatPrompt, ending: Ending
    ) -> None:
        """The one end of every generation: the last delta, usage and metrics, the stored
        message, then the terminal event."""
        provider = self.provider.name
        progress.coalescer.close()
        message_id = uuid.UUID(started.message_id)
        content = "".join(progress.parts)
        self.partials.forget(message_id)
        billed = billed_usage(
            progress.result.usage,
            prompt=prompt,
            content=content,
            finished=ending.status == "complete",
        )
        usage = billed.as_dict()
        for kind in ("prompt_tokens", "completion_tokens", "cached_tokens", "thought_tokens"):
            if usage.get(kind):
                self.metrics.tokens.labels(provider, kind.split("_")[0]).inc(usage[kind] or 0)
        if billed.estimated:
            self.metrics.usage_estimated.labels(provider).inc()
        first_at = progress.first_at
        progress.trace.end(
            finish_reason=ending.finish_reason,
            usage=usage,
            chunks=len(progress.parts),
            error_code=ending.error_code,
        )
        store = self._finish(
            message_id,
            content=content,
            status=ending.status,
            finish_reason=ending.finish_reason,
            error_code=ending.error_code,
            cancel_reason=ending.cancel_reason,
            usage=usage,
            ttft_ms=int((first_at - progress.t0) * 1000) if first_at is not None else None,
            latency_ms=int((time.perf_counter() - progress.t0) * 1000),
            billed=billed,
        )
        cancelled: asyncio.CancelledError | None = None
        try:
            # The final write must land even if this task is cancelled again meanwhile.
            await asyncio.shield(store)
        except asyncio.CancelledError as exc:
            # Cancelled while storing (a shutdown past its grace): the write goes on, and
            # the stream still gets its end before the job stops.
            cancelled = exc
        if ending.status == "error":
            assert ending.error_code is not None
            progress.job.emit(
                ev.error(
                    code=ending.error_code,
                    message=ending.error_message,
                    message_id=started.message_id,
                    partial=bool(content),
                )
            )
        else:
            progress.job.emit(
                ev.done(
                    message_id=started.message_id,
                    finish_reason=ending.finish_reason,
                    usage=usage,
                    provider=provider,
                    status=ending.status,
                    cancel_reason=ending.cancel_reason,
                )
            )
        if cancelled is not None:
            raise cancelled

    async def _finish(
        self, message_id: uuid.UUID, *, billed: Usage | None = None, **fields: Any
    ) -> None:
        with part("persistence", {"linkcoach.status": fields.get("status", "")}):
            await self._finish_retrying(message_id, billed=billed, **fields)

    async def _finish_retrying(
        self, message_id: uuid.UUID, *, billed: Usage | None = None, **fields: Any
    ) -> None:
        for attempt in range(5):
            try:
                async with self.pool.acquire() as conn:
                    await repo.finish_message(
                        conn,
                        message_id=message_id,
                        billed=billed,
                        timezone=self.settings.usage_timezone,
                        **fields,
                    )
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                await asyncio.sleep(0.2 * 2**attempt)
        log.error("final message state not stored", extra={"message_id": str(message_id)})
