"""Coaching chat over HTTP: the SSE stream, resume, cancel, the non-streaming turn and
the `/chat` shim for the widget in production today."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Message, Send

from ..errors import BadRequest, NotFound
from ..llm.base import Turn
from ..server import WRITE_TIMEOUT_EXTENSION
from ..services import events as ev
from ..services.chat import ChatService, TurnRequest, collect
from ..services.events import StreamEvent, TurnOutcome
from ..services.legacy_chat import clean_history, find_continued_conversation
from ..services.pii import mask_pii
from ..state import state_of
from .common import JSON, DbText, path_uuid, read_model, require_user

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
_FAREWELL = object()


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str
    conversation_id: uuid.UUID | None = None
    report_id: uuid.UUID | None = None
    client_message_id: DbText | None = Field(default=None, min_length=1, max_length=128)

    def turn(self) -> TurnRequest:
        return TurnRequest(
            question=self.question,
            conversation_id=self.conversation_id,
            report_id=self.report_id,
            client_message_id=self.client_message_id,
        )


class LegacyChatRequest(BaseModel):
    """`POST /chat` as the product's widget sends it. History items are
    `{role, content}`; they are cleaned, never refused (`services/legacy_chat.py`)."""

    question: str
    conversationHistory: list[Any] = Field(  # noqa: N815
        default_factory=list,
        description="the visible messages before the question, [{role, content}], any length",
    )


def _refuse_if_busy(request: Request) -> None:
    """Refuse a new turn before any work when this process is full (`admission.py`)."""
    state_of(request).admission.refuse_if_full()


def _chat(request: Request) -> ChatService:
    return state_of(request).chat


def _frame(ev: StreamEvent) -> bytes:
    """One SSE frame, built from the event's shared JSON encoding (compact JSON has no
    line breaks, so it is one `data:` line)."""
    return b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (ev.id, ev.event.encode(), ev.encoded())


class _Farewell:
    """Given to sse-starlette as its `shutdown_event`, which it only ever `set()`s when
    the server shuts down: instead of a waiting task per stream, setting it starts a
    timer that queues the farewell after the grace period."""

    def __init__(self, queue: asyncio.Queue[StreamEvent | None | object], grace: float) -> None:
        self._queue = queue
        self._grace = grace
        self._timer: asyncio.TimerHandle | None = None

    def set(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._grace, self._queue.put_nowait, _FAREWELL)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _EventStream(EventSourceResponse):
    """sse-starlette's response; without a send timeout, frames go straight to `send`.

    Its `_send_with_timeout` opens an anyio cancel scope around every frame even when
    the timeout is None (6 % of the server's CPU at 400 streams). Under `linkcoach
    serve` the connection bounds a stalled write instead (`server.py`), so the scope is
    left out; a timeout, when set, keeps the library's own path."""

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.send_timeout is not None:
            await super()._send_with_timeout(send, message)
            return
        try:
            await send(message)
        except BaseException:
            self._send_interrupted = True
            raise


async def _sse(request: Request, events: AsyncIterator[StreamEvent]) -> EventSourceResponse:
    """Stream events as SSE. On server shutdown the stream keeps going for the grace
    period; a stream still open then gets an `error` event `server_shutdown` carrying the
    message id and last event id to resume from (on another instance), and is closed."""
    metrics = state_of(request).metrics
    settings = state_of(request).settings
    # Events and the shutdown farewell meet in one queue: a pump task copies the turn's
    # events in, and the farewell is put in by a timer once the grace period is over.
    queue: asyncio.Queue[StreamEvent | None | object] = asyncio.Queue()
    # Leave a second for the farewell event before sse-starlette cuts the stream.
    shutdown = _Farewell(queue, max(0.0, settings.shutdown_grace_s - 1.0))

    async def frames() -> AsyncIterator[bytes]:
        async def pump() -> None:
            try:
                async for ev in events:
                    queue.put_nowait(ev)
            finally:
                queue.put_nowait(None)

        pumping = asyncio.create_task(pump())
        metrics.active_streams.labels("sse").inc()
        last_id, message_id = 0, None
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if item is _FAREWELL:
                    farewell = ev.server_shutdown(message_id=message_id, last_event_id=last_id)
                    yield _frame(farewell.at(last_id + 1))
                    return
                assert isinstance(item, StreamEvent)
                last_id = item.id
                message_id = item.data.get("message_id", message_id)
                yield _frame(item)
        finally:
            pumping.cancel()
            shutdown.cancel()
            metrics.active_streams.labels("sse").dec()

    return _EventStream(
        frames(),
        headers=SSE_HEADERS,
        ping=settings.stream_ping_interval_s,
        # Under `linkcoach serve` the connection itself bounds a stalled write
        # (`server.py`), which costs nothing per frame.
        send_timeout=None
        if WRITE_TIMEOUT_EXTENSION in request.scope.get("extensions", ())
        else settings.stream_send_timeout_s,
        shutdown_event=shutdown,  # type: ignore[arg-type]
        shutdown_grace_period=settings.shutdown_grace_s,
    )


async def query_stream(request: Request) -> EventSourceResponse:
    _refuse_if_busy(request)
    user = await require_user(request)
    body = await read_model(request, QueryRequest)
    chat = _chat(request)
    started = await chat.start_turn(user, body.turn())
    events = await chat.turn_events(user, started)
    return await _sse(request, events)


def _last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("Last-Event-ID must be an integer", code="invalid_last_event_id") from None
    if value < 0 or value > 10_000_000:
        raise BadRequest("Last-Event-ID is out of range", code="invalid_last_event_id")
    return value


async def resume_stream(request: Request) -> EventSourceResponse:
    user = await require_user(request)
    message_id = path_uuid(request, "message_id")
    after = _last_event_id(request)
    events = await _chat(request).events(user, message_id, after=after)
    return await _sse(request, events)


async def cancel_stream(request: Request) -> JSON:
    user = await require_user(request)
    message_id = path_uuid(request, "message_id")
    result = await _chat(request).cancel(user, message_id)
    return JSON(result, status_code=202 if result["cancelled"] else 200)


def turn_result(outcome: TurnOutcome) -> tuple[dict[str, Any], int]:
    body: dict[str, Any] = {
        "conversation_id": outcome.conversation_id,
        "message_id": outcome.message_id,
        "answer": outcome.text,
        "sources": outcome.sources,
        "provider": outcome.provider,
    }
    if outcome.error is not None:
        code, message = outcome.error
        body["error"] = {"code": code, "message": message}
        return body, 502
    body.update(finish_reason=outcome.finish_reason, usage=outcome.usage, status=outcome.status)
    if outcome.cancel_reason is not None:
        body["cancel_reason"] = outcome.cancel_reason
    return body, 200


async def query(request: Request) -> JSON:
    _refuse_if_busy(request)
    user = await require_user(request)
    body = await read_model(request, QueryRequest)
    chat = _chat(request)
    started = await chat.start_turn(user, body.turn())
    outcome = await collect(await chat.turn_events(user, started))
    result, status = turn_result(outcome)
    return JSON(result, status_code=status)


async def legacy_chat(request: Request) -> JSON:
    """One turn for the product's widget: the answer in one JSON body, stored in the
    conversation the history continues (a new one when it continues none)."""
    _refuse_if_busy(request)
    user = await require_user(request)
    settings = state_of(request).settings
    body = await read_model(request, LegacyChatRequest, limit=settings.chat_max_body_bytes)
    history = clean_history(
        body.conversationHistory,
        max_chars=settings.chat_history_item_chars,
        question=body.question,
    )
    if settings.pii_masking:
        # Stored messages are masked: the history must be too to be matched to them.
        history = [Turn(t.role, mask_pii(t.content)) for t in history]
    async with state_of(request).db.acquire() as conn:
        conversation_id = await find_continued_conversation(
            conn, user_id=user.user_id, history=history
        )
    chat = _chat(request)
    turn = TurnRequest(
        question=body.question, conversation_id=conversation_id, history=tuple(history)
    )
    try:
        started = await chat.start_turn(user, turn)
    except NotFound:
        if conversation_id is None:
            raise
        # Deleted since it was matched: the turn starts a new conversation instead.
        started = await chat.start_turn(user, replace(turn, conversation_id=None))
    outcome = await collect(await chat.turn_events(user, started))
    result, status = turn_result(outcome)
    if status != 200:
        return JSON({"error": result["error"]}, status_code=status)
    return JSON({"answer": outcome.text})


routes = [
    Route("/coaching/query/stream", query_stream, methods=["POST"], name="coaching:stream"),
    Route("/coaching/query", query, methods=["POST"], name="coaching:query"),
    Route("/coaching/streams/{message_id}", resume_stream, methods=["GET"], name="coaching:resume"),
    Route(
        "/coaching/streams/{message_id}/cancel",
        cancel_stream,
        methods=["POST"],
        name="coaching:cancel",
    ),
]
legacy_routes = [Route("/chat", legacy_chat, methods=["POST"], name="legacy:chat")]
