"""The one chat-turn pipeline that both SSE and WebSocket drive.

A turn, in order (`start_turn`): the question is validated and (with PII_MASKING)
masked; the turn takes an admission slot and pays the user's turn limit; the
conversation or report it continues is read (a repeated `client_message_id` replays the
earlier answer here); the daily budget is checked; context is retrieved; the turn takes
one of its user's stream slots; the user's message and an empty `streaming` assistant
message are stored in one transaction; the generation job starts and owns both slots
(`leases.py`). `events` then yields the turn's events (`meta`, `delta`..., then `done`
or `error`, built by `events.py`) from any point, on any instance. Transports only
translate events into frames.

The generation job (`generation.py`) is three steps: the provider is read, its chunks
joined by a `Coalescer` into `delta` events; the way it ended is classified into an
`Ending`; one `_finalize` step stores the message and usage and emits the terminal
event. A cancel carries its reason (`streams.CancelReason`: `user`, `remote`,
`shutdown`) to the `done` event (`finish_reason: "cancelled"`, `cancel_reason`) and the
stored row, and the job's task then ends cancelled, as a cancelled task should.

A reader always gets an end, also when the producing instance died (SIGKILL, OOM, a lost
machine): its lease expires (`STREAM_LEASE_TTL`), the reader marks the stored row
`interrupted` with `finish_reason: "stream_lost"` (only if it is still `streaming`) and
ends with `error` `stream_lost`. A stored row that is already final wins over a Redis
log without a terminal event: it is replayed. A row is presumed alive for one lease
period after its last write, so a job whose lease is not flushed yet is never declared
dead.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ..config import Settings
from ..db.repositories import conversations as repo
from ..db.repositories import reports as reports_repo
from ..errors import Conflict, NotFound, ValidationFailed
from ..llm.base import (
    ChatPrompt,
    LLMProvider,
    PassageLike,
    Turn,
)
from ..llm.prompts import budget_history, system_instruction
from ..metrics import Metrics
from ..rag.protocol import Retrieval, sources_of
from ..tracing import begin as begin_timings
from ..tracing import current as current_timings
from ..tracing import part
from . import events as ev
from .admission import Admission
from .auth import Principal, confirm_user, unknown_user
from .events import StreamEvent, TurnOutcome
from .generation import Generation
from .leases import Leases
from .persist import PartialWriter
from .pii import mask_turn
from .ratelimit import Limiter, NullLimiter
from .streams import Job, ProducerLost, StreamHub
from .usage import check_budget

_HISTORY_ROWS = 40
# Finish reasons of rows whose producer died; they replay as `error` `stream_lost`.
LOST_REASONS = frozenset({"stream_lost", "server_restart"})
log = logging.getLogger(__name__)


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


def turn_code(user: Principal, conversation: asyncpg.Record | None) -> str | None:
    """The leadership type a turn is coached for: the conversation's, else the token's
    (a turn on a report takes the report's instead)."""
    if conversation is not None and conversation["leadership_type"]:
        return str(conversation["leadership_type"])
    return user.leadership_type


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
        limiter: Limiter | None = None,
        admission: Admission | None = None,
        tracer: Any = None,
    ) -> None:
        self.limiter: Limiter = limiter if limiter is not None else NullLimiter()
        self.admission: Admission = admission if admission is not None else Admission.unlimited()
        self.tracer = tracer
        self.settings = settings
        self.pool = pool
        self.hub = hub
        self.provider = provider
        self.retriever = retriever
        self.partials = partials
        self.metrics = metrics
        self.generation = Generation(
            settings=settings,
            pool=pool,
            partials=partials,
            metrics=metrics,
            provider=lambda: self.provider,
        )

    # -- starting a turn --------------------------------------------------------------
    async def start_turn(
        self, user: Principal, req: TurnRequest, *, confirmed: bool = True
    ) -> TurnStarted:
        """Admit the turn (or raise ServerBusy before any work), start it, and hand its
        admission slot to the generation job, which gives it back when it ends. With
        `confirmed=False` the token's user has not been looked up yet: the turn's first
        statement does it (the conversation read, or the new conversation's INSERT) and
        refuses with `unknown_user` before anything is stored or sent to the model."""
        timings = current_timings()
        if timings is not None and not timings.per_turn:
            return await self._admit_and_start(user, req, confirmed)
        # A WebSocket turn: the socket outlives its turns, so each gets its own timings and
        # its own `turn` span (the request's span, for HTTP).
        begin_timings(self.tracer, per_turn=True)
        with part("turn"):
            return await self._admit_and_start(user, req, confirmed)

    async def _admit_and_start(
        self, user: Principal, req: TurnRequest, confirmed: bool
    ) -> TurnStarted:
        return await self.admitted(lambda leases: self._start_turn(user, req, leases, confirmed))

    async def admitted(self, start: Callable[[Leases], Awaitable[TurnStarted]]) -> TurnStarted:
        """Run `start` under an admission slot (ServerBusy when this process is full):
        turns and regenerations alike. `start` adds its stream slot to the leases and
        hands them to the job it starts; whatever is still held here when it returns or
        fails (a replay, a refusal) is given back on the way out."""
        async with Leases() as leases:
            leases.take(self.admission.admit())
            return await start(leases)

    async def _start_turn(
        self, user: Principal, req: TurnRequest, leases: Leases, confirmed: bool
    ) -> TurnStarted:
        question = validate_question(req.question, max_chars=self.settings.max_question_chars)
        if self.settings.pii_masking:
            # Before anything is retrieved on, stored, logged or sent to the model.
            question, req = mask_turn(question, req)
        await self.limiter.hit("turns", user.user_id)
        # The question's analysis starts now and runs in the query process while the
        # conversation and the budget are read (for the token's type: a conversation or
        # report of another type analyses it again).
        prefetched = (
            self.retriever.prefetch(question, leadership_type=user.leadership_type)
            if self.retriever is not None
            else None
        )
        try:
            return await self._start_prefetched(
                user, req, leases, question, prefetched, confirmed=confirmed
            )
        finally:
            if prefetched is not None:
                prefetched.cancel()

    async def _start_prefetched(
        self,
        user: Principal,
        req: TurnRequest,
        leases: Leases,
        question: str,
        prefetched: Any,
        *,
        confirmed: bool,
    ) -> TurnStarted:
        """The rest of `_start_turn`, once the question's analysis is under way."""
        code = user.leadership_type
        conversation = None
        if req.conversation_id is not None or req.report_id is not None:
            async with self.pool.acquire() as conn:
                if not confirmed:
                    await confirm_user(conn, user)
                if req.conversation_id is not None:
                    conversation = await repo.get_conversation(
                        conn, conversation_id=req.conversation_id, user_id=user.user_id
                    )
                    code = turn_code(user, conversation)
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
        passages = await self.context(question, code, prefetched=prefetched)
        message_id = uuid.uuid4()
        leases.take(await self.limiter.acquire_stream(user.user_id, str(message_id)))
        return await self._store_and_start(
            user=user,
            req=req,
            question=question,
            code=code,
            conversation=conversation,
            passages=passages,
            message_id=message_id,
            leases=leases,
        )

    async def _store_and_start(
        self,
        *,
        user: Principal,
        req: TurnRequest,
        question: str,
        code: str | None,
        conversation: asyncpg.Record | None,
        passages: Sequence[PassageLike],
        message_id: uuid.UUID,
        leases: Leases,
    ) -> TurnStarted:
        sources = sources_of(passages)
        history_rows: list[asyncpg.Record] = []
        if conversation is None:
            conversation_id = uuid.uuid4()
            async with self.pool.acquire() as conn:
                # The user's existence is checked here too (a token outlives its user).
                stored = await repo.start_conversation(
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
            if not stored:
                raise unknown_user()
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
        prompt = self.prompt(turns=turns, question=question, passages=passages, code=code)
        started = TurnStarted(str(conversation_id), str(message_id), sources, replayed=False)
        self.start_generation(started=started, prompt=prompt, leases=leases)
        return started

    async def context(
        self, question: str, code: str | None, *, prefetched: Any = None
    ) -> list[PassageLike]:
        """The passages an answer to `question` is grounded in (none without retrieval)."""
        if self.retriever is None:
            return []
        with part("retrieval", {"linkcoach.leadership_type": code or ""}):
            return list(
                await self.retriever.search(
                    question, leadership_type=code, k=4, prefetched=prefetched
                )
            )

    def prompt(
        self,
        *,
        turns: Sequence[Turn],
        question: str,
        passages: Sequence[PassageLike],
        code: str | None,
    ) -> ChatPrompt:
        """The model's prompt: the type's system instruction, the history that fits
        HISTORY_TOKEN_BUDGET (newest first), the question and its passages."""
        return ChatPrompt(
            system=system_instruction(code),
            history=budget_history(turns, self.settings.history_token_budget),
            question=question,
            passages=passages,
            leadership_code=code,
        )

    def start_generation(self, *, started: TurnStarted, prompt: ChatPrompt, leases: Leases) -> Job:
        """Start the job that writes `started`'s answer; it takes over `leases`."""
        return self.hub.start_job(
            started.message_id,
            lambda job: self.generation.run(job, started=started, prompt=prompt),
            leases=leases.hand_over(),
        )

    def _replayed(self, conversation_id: uuid.UUID, reply: asyncpg.Record | None) -> TurnStarted:
        if reply is None:
            raise Conflict("this client_message_id is already being answered")
        return TurnStarted(str(conversation_id), str(reply["id"]), reply["sources"], True)

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
            for event in replay_from_row(row):
                yield event.at(event.id + after)
            return
        while True:
            try:
                async for event in self.hub.follow(mid, after):
                    after = event.id
                    yield event
                return
            except ProducerLost:
                row = await self._interrupt_lost(row["id"])
            if row["status"] == "streaming":
                continue  # written to within the last lease period: not presumed dead
            if row["finish_reason"] in LOST_REASONS:
                yield ev.stream_lost(message_id=mid, partial=bool(row["content"])).at(after + 1)
            else:
                # It ended normally, but the end never reached the buffer.
                for event in replay_from_row(row):
                    yield event.at(event.id + after)
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


def replay_from_row(row: asyncpg.Record) -> list[StreamEvent]:
    """A finished message replayed as a stream: meta, one delta, then done or error."""
    mid = str(row["id"])
    partial = bool(row["content"])
    events = [
        ev.meta(
            conversation_id=str(row["conversation_id"]),
            message_id=mid,
            sources=row["sources"],
            provider=row["provider"],
            model=row["model"],
            replay=True,
        )
    ]
    if row["content"]:
        events.append(ev.delta(row["content"]))
    if row["status"] == "interrupted" and row["finish_reason"] in LOST_REASONS:
        events.append(ev.stream_lost(message_id=mid, partial=partial))
    elif row["status"] == "error":
        events.append(
            ev.failed(code=row["error_code"] or "llm_error", message_id=mid, partial=partial)
        )
    else:
        events.append(
            ev.done(
                message_id=mid,
                finish_reason=row["finish_reason"],
                usage={
                    "prompt_tokens": row["prompt_tokens"],
                    "completion_tokens": row["completion_tokens"],
                    "total_tokens": row["total_tokens"],
                },
                provider=row["provider"],
                status=row["status"],
                cancel_reason=row["cancel_reason"],
            )
        )
    return [event.at(i) for i, event in enumerate(events, start=1)]


async def collect(events: AsyncIterator[StreamEvent]) -> TurnOutcome:
    """A whole turn, read to its end."""
    return TurnOutcome.of([event async for event in events])
