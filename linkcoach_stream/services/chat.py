"""The one chat-turn pipeline that both SSE and WebSocket drive.

`start_turn` validates, stores the user's message and an empty `streaming` assistant
message in one transaction, retrieves context, and starts the generation job; `events`
yields the turn's events (`meta`, `delta`..., then `done` or `error`) from any point, on
any instance. Transports only translate events into frames.

A reader always gets an end, also when the producing instance died (SIGKILL, OOM, a lost
machine): its lease expires (`STREAM_LEASE_TTL`), the reader marks the stored row
`interrupted` with `finish_reason: "stream_lost"` (only if it is still `streaming`) and
ends with `error` `stream_lost`. A stored row that is already final wins over a Redis
log without a terminal event: it is replayed. A row is presumed alive for one lease
period after its last write, so a job whose lease is not flushed yet is never declared
dead.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from ..config import Settings
from ..db.repositories import conversations as repo
from ..db.repositories import reports as reports_repo
from ..db.repositories import usage as usage_repo
from ..errors import Conflict, NotFound, ValidationFailed
from ..llm.base import (
    ChatPrompt,
    LLMError,
    LLMProvider,
    PassageLike,
    StreamResult,
    Turn,
    Usage,
)
from ..llm.prompts import budget_history, system_instruction
from ..metrics import Metrics
from ..tracing import GenerationTrace, part, snapshot_ms
from ..tracing import begin as begin_timings
from ..tracing import current as current_timings
from .admission import Admission
from .auth import Principal
from .persist import PartialWriter
from .pii import mask_turn
from .ratelimit import RateLimiter
from .streams import Job, ProducerLost, StreamEvent, StreamHub
from .usage import billed_usage, check_budget

_HISTORY_ROWS = 40
# What a client is told when the provider fails. The provider's own text (which can quote
# keys, prompts, internal addresses) goes to the log only; clients switch on the code.
PROVIDER_FAILED = "the coach could not answer this time; please ask again"
GENERATION_FAILED = "the answer could not be generated; please ask again"
# Finish reasons of rows whose producer died; they replay as `error` `stream_lost`.
LOST_REASONS = frozenset({"stream_lost", "server_restart"})
log = logging.getLogger(__name__)


class Retrieval(Protocol):
    async def search(
        self, query: str, *, leadership_type: str | None = None, k: int = 4
    ) -> Sequence[Any]: ...


@dataclass(frozen=True, slots=True)
class TurnRequest:
    question: str
    conversation_id: uuid.UUID | None = None
    report_id: uuid.UUID | None = None
    client_message_id: str | None = None
    # Given by the legacy `/chat` shim, whose widget keeps the history itself.
    history: tuple[Turn, ...] | None = None


@dataclass(frozen=True, slots=True)
class TurnStarted:
    conversation_id: str
    message_id: str
    sources: list[dict[str, Any]]
    replayed: bool
    # More `meta` fields, e.g. which answer a regeneration replaces.
    meta: dict[str, Any] = field(default_factory=dict)


def source_of(passage: Any) -> dict[str, Any]:
    return {
        "path": passage.path,
        "title": passage.title,
        "category": passage.category,
        "section": passage.section,
    }


def sources_of(passages: Any) -> list[dict[str, Any]]:
    """Each document once, in rank order, with the section that matched best."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for passage in passages:
        if passage.path not in seen:
            seen.add(passage.path)
            out.append(source_of(passage))
    return out


def validate_question(question: str, *, max_chars: int) -> str:
    text = question.strip()
    if not text:
        raise ValidationFailed("question: must not be empty", field="question")
    if len(text) > max_chars:
        raise ValidationFailed(
            f"question: must be at most {max_chars} characters (got {len(text)})",
            field="question",
        )
    if "\x00" in text:
        raise ValidationFailed("question: must not contain NUL characters", field="question")
    return text


class ChatService:
    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        hub: StreamHub,
        provider: LLMProvider,
        retriever: Retrieval | None,
        partials: PartialWriter,
        metrics: Metrics,
        limiter: RateLimiter | None = None,
        admission: Admission | None = None,
        tracer: Any = None,
    ) -> None:
        self.limiter = limiter
        self.admission = admission
        self.tracer = tracer
        self.settings = settings
        self.pool = pool
        self.hub = hub
        self.provider = provider
        self.retriever = retriever
        self.partials = partials
        self.metrics = metrics

    # -- starting a turn --------------------------------------------------------------
    async def start_turn(self, user: Principal, req: TurnRequest) -> TurnStarted:
        """Admit the turn (or raise ServerBusy before any work), start it, and hand its
        admission slot to the generation job, which gives it back when it ends."""
        timings = current_timings()
        if timings is not None and not timings.per_turn:
            return await self._admit_and_start(user, req)
        # A WebSocket turn: the socket outlives its turns, so each gets its own timings and
        # its own `turn` span (the request's span, for HTTP).
        begin_timings(self.tracer, per_turn=True)
        with part("turn"):
            return await self._admit_and_start(user, req)

    async def _admit_and_start(self, user: Principal, req: TurnRequest) -> TurnStarted:
        return await self.admitted(lambda: self._start_turn(user, req))

    async def admitted(self, start: Callable[[], Awaitable[TurnStarted]]) -> TurnStarted:
        """Run `start` under an admission slot (ServerBusy when this process is full) and
        hand the slot to the generation job it started: turns and regenerations alike."""
        slot = self.admission.admit() if self.admission is not None else None
        try:
            started = await start()
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        if slot is not None:
            job = None if started.replayed else self.hub.local_job(started.message_id)
            if job is not None and job.task is not None:
                slot.release_when_done(job.task)
            else:
                slot.release()
        return started

    async def _start_turn(self, user: Principal, req: TurnRequest) -> TurnStarted:
        question = validate_question(req.question, max_chars=self.settings.max_question_chars)
        if self.settings.pii_masking:
            # Before anything is retrieved on, stored, logged or sent to the model.
            question, req = mask_turn(question, req)
        if self.limiter is not None:
            await self.limiter.hit("turns", user.user_id)
        code = user.leadership_type
        conversation = None
        if req.conversation_id is not None or req.report_id is not None:
            async with self.pool.acquire() as conn:
                if req.conversation_id is not None:
                    conversation = await repo.get_conversation(
                        conn, conversation_id=req.conversation_id, user_id=user.user_id
                    )
                    code = conversation["leadership_type"] or code
                    if req.client_message_id:
                        existing = await repo.find_turn_by_client_id(
                            conn,
                            conversation_id=req.conversation_id,
                            client_message_id=req.client_message_id,
                        )
                        if existing is not None:
                            return self._replayed(conversation["id"], existing[1])
                if req.report_id is not None:
                    report = await reports_repo.get_report(
                        conn, report_id=req.report_id, user_id=user.user_id
                    )
                    code = report["leadership_code"]

        await check_budget(self.pool, self.settings, self.metrics, user_id=user.user_id)
        passages: Sequence[PassageLike] = []
        if self.retriever is not None:
            with part("retrieval", {"linkcoach.leadership_type": code or ""}):
                passages = list(await self.retriever.search(question, leadership_type=code, k=4))
        sources = sources_of(passages)
        message_id = uuid.uuid4()
        if self.limiter is not None:
            await self.limiter.acquire_stream(user.user_id, str(message_id))
        try:
            return await self._store_and_start(
                user, req, question, code, conversation, passages, sources, message_id
            )
        except BaseException:
            if self.limiter is not None and self.hub.local_job(str(message_id)) is None:
                await self.limiter.release_stream(user.user_id, str(message_id))
            raise

    async def _store_and_start(
        self,
        user: Principal,
        req: TurnRequest,
        question: str,
        code: str | None,
        conversation: asyncpg.Record | None,
        passages: Sequence[PassageLike],
        sources: list[dict[str, Any]],
        message_id: uuid.UUID,
    ) -> TurnStarted:
        history_rows: list[asyncpg.Record] = []
        if conversation is None:
            conversation_id = uuid.uuid4()
            async with self.pool.acquire() as conn:
                await repo.start_conversation(
                    conn,
                    conversation_id=conversation_id,
                    user_id=user.user_id,
                    report_id=req.report_id,
                    title=question[:60],
                    leadership_type=code,
                    question=question,
                    client_message_id=req.client_message_id,
                    assistant_id=message_id,
                    provider=self.provider.name,
                    model=self.provider.model,
                    sources=sources,
                )
        else:
            conversation_id = conversation["id"]
            async with self.pool.acquire() as conn, conn.transaction():
                history_rows = await repo.recent_history(
                    conn, conversation_id=conversation_id, limit=_HISTORY_ROWS
                )
                user_msg = await repo.insert_user_message(
                    conn,
                    conversation_id=conversation_id,
                    user_id=user.user_id,
                    content=question,
                    client_message_id=req.client_message_id,
                )
                if user_msg is None:
                    # A concurrent request with the same client_message_id won the insert.
                    assert req.client_message_id is not None
                    existing = await repo.find_turn_by_client_id(
                        conn,
                        conversation_id=conversation_id,
                        client_message_id=req.client_message_id,
                    )
                    assert existing is not None
                    if self.limiter is not None:
                        await self.limiter.release_stream(user.user_id, str(message_id))
                    return self._replayed(conversation_id, existing[1])
                await repo.insert_assistant_message(
                    conn,
                    message_id=message_id,
                    conversation_id=conversation_id,
                    user_id=user.user_id,
                    reply_to=user_msg["id"],
                    provider=self.provider.name,
                    model=self.provider.model,
                    sources=sources,
                )
                await repo.touch_conversation(conn, conversation_id=conversation_id)

        turns = (
            list(req.history)
            if req.history is not None
            else [Turn(r["role"], r["content"]) for r in history_rows]
        )
        history = budget_history(
            turns,
            self.settings.history_token_budget,
        )
        prompt = ChatPrompt(
            system=system_instruction(code),
            history=history,
            question=question,
            passages=passages,
            leadership_code=code,
        )
        started = TurnStarted(str(conversation_id), str(message_id), sources, replayed=False)
        self.hub.start_job(
            str(message_id),
            lambda job: self._generate(job, message_id, started, prompt, user.user_id),
        )
        return started

    def _replayed(self, conversation_id: uuid.UUID, reply: asyncpg.Record | None) -> TurnStarted:
        if reply is None:
            raise Conflict("this client_message_id is already being answered")
        return TurnStarted(str(conversation_id), str(reply["id"]), reply["sources"], True)

    # -- the generation job -----------------------------------------------------------
    async def _generate(
        self,
        job: Job,
        message_id: uuid.UUID,
        started: TurnStarted,
        prompt: ChatPrompt,
        user_id: str,
    ) -> None:
        try:
            await self._generate_inner(job, message_id, started, prompt)
        finally:
            if self.limiter is not None:
                await asyncio.shield(self.limiter.release_stream(user_id, str(message_id)))

    async def _generate_inner(
        self, job: Job, message_id: uuid.UUID, started: TurnStarted, prompt: ChatPrompt
    ) -> None:
        provider = self.provider.name
        job.emit(
            "meta",
            {
                "conversation_id": started.conversation_id,
                "message_id": started.message_id,
                "sources": started.sources,
                "provider": provider,
                "model": self.provider.model,
                **started.meta,
                "timings": snapshot_ms(),
            },
        )
        trace = GenerationTrace(
            provider=provider, model=self.provider.model, message_id=started.message_id
        )
        stall_s = 2 * self.settings.expected_chunk_gap_ms / 1000
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        first_at: float | None = None
        last_chunk_at = t0
        parts: list[str] = []
        pending: list[str] = []
        last_emit = 0.0
        flush_handle: asyncio.TimerHandle | None = None
        coalesce_s = self.settings.coalesce_ms / 1000
        result = StreamResult()

        def flush() -> None:
            nonlocal flush_handle, last_emit
            if flush_handle is not None:
                flush_handle.cancel()
                flush_handle = None
            if pending and not job.finished:
                text = "".join(pending)
                pending.clear()
                job.emit("delta", {"text": text})
                last_emit = time.perf_counter()

        status, finish_reason, error_code = "complete", "stop", None
        error_message = ""
        self.metrics.active_generations.inc()
        try:
            async with asyncio.timeout(self.settings.llm_total_timeout_s):
                async for chunk in self.provider.stream(prompt, result):
                    now = time.perf_counter()
                    if first_at is None:
                        first_at = now
                        self.metrics.ttft_seconds.labels(provider).observe(now - t0)
                        trace.first_chunk(now - t0)
                    else:
                        self.metrics.chunk_gap_seconds.labels(provider).observe(now - last_chunk_at)
                        if now - last_chunk_at > stall_s:
                            self.metrics.chunk_stalls.labels(provider).inc()
                    last_chunk_at = now
                    parts.append(chunk)
                    pending.append(chunk)
                    self.partials.mark(message_id, parts)
                    if now - last_emit >= coalesce_s:
                        flush()
                    elif flush_handle is None:
                        flush_handle = loop.call_later(coalesce_s - (now - last_emit), flush)
            finish_reason = result.finish_reason or "stop"
        except asyncio.CancelledError:
            status, finish_reason = "interrupted", "cancelled"
        except TimeoutError:
            status, finish_reason, error_code = "error", "timeout", "llm_timeout"
            error_message = "the answer took too long and was stopped"
            self.metrics.llm_errors.labels(provider, "total_timeout").inc()
        except LLMError as exc:
            status, finish_reason, error_code = "error", "error", "llm_error"
            error_message = PROVIDER_FAILED
            self.metrics.llm_errors.labels(provider, exc.kind).inc()
            log.warning(
                "provider failed during an answer",
                extra={"message_id": started.message_id, "provider": provider, "kind": exc.kind},
                exc_info=exc,
            )
        except Exception as exc:  # noqa: BLE001 - a job must always end with an event
            status, finish_reason, error_code = "error", "error", "internal_error"
            error_message = GENERATION_FAILED
            self.metrics.llm_errors.labels(provider, "internal").inc()
            log.error(
                "answer generation failed",
                extra={"message_id": started.message_id, "provider": provider},
                exc_info=exc,
            )
        finally:
            self.metrics.active_generations.dec()
            flush()
            content = "".join(parts)
            self.partials.forget(message_id)
            billed = billed_usage(
                result.usage, prompt=prompt, content=content, finished=status == "complete"
            )
            usage = billed.as_dict()
            for kind in ("prompt_tokens", "completion_tokens", "cached_tokens", "thought_tokens"):
                if usage.get(kind):
                    self.metrics.tokens.labels(provider, kind.split("_")[0]).inc(usage[kind] or 0)
            if billed.estimated:
                self.metrics.usage_estimated.labels(provider).inc()
            ttft_ms = int((first_at - t0) * 1000) if first_at is not None else None
            latency_ms = int((time.perf_counter() - t0) * 1000)
            trace.end(
                finish_reason=finish_reason, usage=usage, chunks=len(parts), error_code=error_code
            )
            # The final write must land even if this task is being cancelled again.
            await asyncio.shield(
                self._finish(
                    message_id,
                    content=content,
                    status=status,
                    finish_reason=finish_reason,
                    error_code=error_code,
                    usage=usage,
                    ttft_ms=ttft_ms,
                    latency_ms=latency_ms,
                    billed=billed,
                )
            )
            if status == "error":
                job.emit(
                    "error",
                    {
                        "code": error_code,
                        "message": error_message,
                        "message_id": started.message_id,
                        "partial": bool(content),
                    },
                )
            else:
                job.emit(
                    "done",
                    {
                        "message_id": started.message_id,
                        "finish_reason": finish_reason,
                        "usage": usage,
                        "provider": provider,
                        "status": status,
                    },
                )

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
                async with self.pool.acquire() as conn, conn.transaction():
                    await repo.finish_message(conn, message_id=message_id, **fields)
                    if billed is not None:
                        await usage_repo.record_turn(
                            conn,
                            message_id=message_id,
                            usage=billed,
                            timezone=self.settings.usage_timezone,
                        )
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                await asyncio.sleep(0.2 * 2**attempt)
        log.error("final message state not stored", extra={"message_id": str(message_id)})

    # -- reading a turn ---------------------------------------------------------------
    async def turn_events(
        self, user: Principal, started: TurnStarted
    ) -> AsyncIterator[StreamEvent]:
        """Events of a turn this request just started. Its job runs in this process, so
        the message needs no second lookup; a replayed turn is read like any message."""
        if not started.replayed:
            return self.hub.follow(started.message_id, 0)
        return await self.events(user, uuid.UUID(started.message_id))

    async def events(
        self, user: Principal, message_id: uuid.UUID, *, after: int = 0
    ) -> AsyncIterator[StreamEvent]:
        """Events of an owned message after `after`; raises NotFound for others."""
        async with self.pool.acquire() as conn:
            row = await repo.get_message(conn, message_id=message_id, user_id=user.user_id)
        if row["role"] != "assistant":
            raise NotFound("message not found")
        return self._events(row, after)

    async def _events(self, row: asyncpg.Record, after: int) -> AsyncIterator[StreamEvent]:
        mid = str(row["id"])
        last = await self.hub.last_event(mid)
        if last is not None and last.terminal and after >= last.id:
            # The client has seen the end already: say it again rather than nothing.
            yield last
            return
        logged_end = last is not None and last.terminal
        if not logged_end and row["status"] != "streaming" and self.hub.local_job(mid) is None:
            # The buffer has expired, or its producer died before writing the end: replay
            # the stored message. A client that had part of it gets the whole text again
            # under new ids, with `replay: true` in `meta` telling it to replace what it
            # shows.
            for ev in replay_from_row(row):
                yield StreamEvent(ev.id + after, ev.event, ev.data)
            return
        while True:
            try:
                async for ev in self.hub.follow(mid, after):
                    after = ev.id
                    yield ev
                return
            except ProducerLost:
                row = await self._interrupt_lost(row["id"])
            if row["status"] == "streaming":
                continue  # written to within the last lease period: not presumed dead
            if row["finish_reason"] in LOST_REASONS:
                yield stream_lost(after + 1, mid, partial=bool(row["content"]))
            else:
                # It ended normally, but the end never reached the buffer.
                for ev in replay_from_row(row):
                    yield StreamEvent(ev.id + after, ev.event, ev.data)
            return

    async def _interrupt_lost(self, message_id: uuid.UUID) -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            return await repo.interrupt_lost_message(
                conn, message_id=message_id, idle_s=self.hub.lease_ttl_s
            )

    async def cancel(self, user: Principal, message_id: uuid.UUID) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            row = await repo.get_message(conn, message_id=message_id, user_id=user.user_id)
        mid = str(message_id)
        if row["status"] == "streaming" and self.hub.local_job(mid) is None:
            held = await self.hub.leases([mid])
            if held == [False]:
                # Nobody generates it any more: settle it now instead of waiting for
                # the sweep, so the caller learns the final status.
                row = await self._interrupt_lost(message_id)
        if row["status"] != "streaming":
            return {"message_id": mid, "status": row["status"], "cancelled": False}
        local = await self.hub.cancel(mid)
        return {
            "message_id": mid,
            "status": "cancelling",
            "cancelled": True,
            "local": local,
        }


def stream_lost(event_id: int, message_id: str, *, partial: bool) -> StreamEvent:
    """The end of a stream whose producer died, live or replayed."""
    return StreamEvent(
        event_id,
        "error",
        {
            "code": "stream_lost",
            "message": "the instance generating this answer stopped; "
            "the stored message keeps what was generated",
            "message_id": message_id,
            "partial": partial,
        },
    )


def replay_from_row(row: asyncpg.Record) -> list[StreamEvent]:
    """A finished message replayed as a stream: meta, one delta, then done or error."""
    mid = str(row["id"])
    events = [
        StreamEvent(
            1,
            "meta",
            {
                "conversation_id": str(row["conversation_id"]),
                "message_id": mid,
                "sources": row["sources"],
                "provider": row["provider"],
                "model": row["model"],
                "replay": True,
            },
        )
    ]
    if row["content"]:
        events.append(StreamEvent(2, "delta", {"text": row["content"]}))
    last = len(events) + 1
    if row["status"] == "interrupted" and row["finish_reason"] in LOST_REASONS:
        events.append(stream_lost(last, mid, partial=bool(row["content"])))
    elif row["status"] == "error":
        events.append(
            StreamEvent(
                last,
                "error",
                {
                    "code": row["error_code"] or "llm_error",
                    "message": PROVIDER_FAILED
                    if (row["error_code"] or "llm_error") == "llm_error"
                    else GENERATION_FAILED,
                    "message_id": mid,
                    "partial": bool(row["content"]),
                },
            )
        )
    else:
        events.append(
            StreamEvent(
                last,
                "done",
                {
                    "message_id": mid,
                    "finish_reason": row["finish_reason"],
                    "usage": {
                        "prompt_tokens": row["prompt_tokens"],
                        "completion_tokens": row["completion_tokens"],
                        "total_tokens": row["total_tokens"],
                    },
                    "provider": row["provider"],
                    "status": row["status"],
                },
            )
        )
    return events


async def collect(events: AsyncIterator[StreamEvent]) -> tuple[str, list[StreamEvent]]:
    text: list[str] = []
    seen: list[StreamEvent] = []
    async for ev in events:
        seen.append(ev)
        if ev.event == "delta":
            text.append(ev.data["text"])
    return "".join(text), seen
