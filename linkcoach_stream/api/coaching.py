"""Coaching chat over HTTP: the SSE stream, resume, cancel, the non-streaming turn and
the `/chat` shim for the widget in production today."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.routing import Route

from ..errors import BadRequest, NotFound
from ..llm.base import Turn
from ..services.chat import ChatService, TurnRequest, collect
from ..services.events import TurnOutcome
from ..services.legacy_chat import clean_history, find_continued_conversation
from ..services.pii import mask_pii
from ..state import state_of
from . import sse
from .common import JSON, path_uuid, read_model, require_user
from .turns import QueryRequest


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


async def query_stream(request: Request) -> sse.EventStream:
    _refuse_if_busy(request)
    # Looked up by the turn's first statement (`start_turn`, `confirmed=False`).
    user = await require_user(request, look_up=False)
    body = await read_model(request, QueryRequest)
    chat = _chat(request)
    started = await chat.start_turn(user, body.turn(), confirmed=False)
    events = await chat.turn_events(user, started)
    return sse.response(request, events, message_id=started.message_id)


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


async def resume_stream(request: Request) -> sse.EventStream:
    user = await require_user(request)
    message_id = path_uuid(request, "message_id")
    after = _last_event_id(request)
    events = await _chat(request).events(user, message_id, after=after)
    return sse.response(request, events, message_id=str(message_id), after=after)


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
    # Looked up by the turn's first statement (`start_turn`, `confirmed=False`).
    user = await require_user(request, look_up=False)
    body = await read_model(request, QueryRequest)
    chat = _chat(request)
    started = await chat.start_turn(user, body.turn(), confirmed=False)
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
