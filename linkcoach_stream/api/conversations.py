"""Conversations API: create, list (newest first), read with paged messages, delete.

Cursors are opaque to clients but decoded here, so anything a client can put in one is
checked before it reaches a query: a conversation cursor's time must stay a valid
timestamp once moved to UTC (asyncpg sends `timestamptz` in UTC, and Python's calendar
ends at years 1 and 9999), a message cursor must be a `bigint` sequence number.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..db.repositories import conversations as repo
from ..db.repositories import reports as reports_repo
from ..errors import BadRequest
from ..state import state_of
from .common import JSON, DbText, path_uuid, read_model, require_user

DEFAULT_PAGE = 20
MAX_PAGE = 100
MAX_TITLE_CHARS = 200
MAX_SEQ = 2**63 - 1  # messages.seq is a bigint


class CreateConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    report_id: uuid.UUID | None = None
    title: Annotated[DbText, Field(max_length=MAX_TITLE_CHARS)] | None = None


def conversation_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "report_id": str(row["report_id"]) if row["report_id"] else None,
        "title": row["title"],
        "leadership_type": row["leadership_type"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def message_json(row: asyncpg.Record) -> dict[str, Any]:
    usage = None
    if row["total_tokens"] is not None or row["completion_tokens"] is not None:
        usage = {
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "total_tokens": row["total_tokens"],
        }
    return {
        "id": str(row["id"]),
        "role": row["role"],
        "content": row["content"],
        "status": row["status"],
        "client_message_id": row["client_message_id"],
        "reply_to": str(row["reply_to"]) if row["reply_to"] else None,
        "provider": row["provider"],
        "model": row["model"],
        "finish_reason": row["finish_reason"],
        "error_code": row["error_code"],
        "cancel_reason": row["cancel_reason"],
        "usage": usage,
        "ttft_ms": row["ttft_ms"],
        "latency_ms": row["latency_ms"],
        "sources": row["sources"],
        "created_at": row["created_at"],
        **answer_json(row),
    }


def answer_json(row: asyncpg.Record) -> dict[str, Any]:
    """An answer's feedback and versions (a question has neither)."""
    if row["role"] != "assistant":
        return {}
    feedback = None
    if row["feedback_rating"] is not None:
        feedback = {
            "rating": row["feedback_rating"],
            "comment": row["feedback_comment"],
            "updated_at": row["feedback_updated_at"],
        }
    ids = [str(i) for i in row["version_ids"] or [row["id"]]]
    return {
        "feedback": feedback,
        "version": row["version"],
        "version_count": len(ids),
        "version_ids": ids,
    }


def page_limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_PAGE
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("limit must be an integer", code="invalid_query") from None
    if not 1 <= value <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}", code="invalid_query")
    return value


def _encode_cursor(updated_at: datetime, conv_id: uuid.UUID) -> str:
    raw = f"{updated_at.isoformat()}|{conv_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad_cursor() -> BadRequest:
    return BadRequest("cursor is not valid", code="invalid_query", field="cursor")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, conv_id = base64.urlsafe_b64decode(padded).decode().split("|")
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.astimezone(UTC), uuid.UUID(conv_id)
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise _bad_cursor() from None


def _decode_seq(cursor: str) -> int:
    try:
        seq = int(cursor)
    except ValueError:
        raise _bad_cursor() from None
    if not 0 <= seq <= MAX_SEQ:
        raise _bad_cursor()
    return seq


async def create_conversation(request: Request) -> JSON:
    user = await require_user(request)
    body = await read_model(request, CreateConversation)
    leadership_type = user.leadership_type
    async with state_of(request).db.acquire() as conn:
        if body.report_id is not None:
            report = await reports_repo.get_report(
                conn, report_id=body.report_id, user_id=user.user_id
            )
            leadership_type = report["leadership_code"]
        row = await repo.create_conversation(
            conn,
            user_id=user.user_id,
            report_id=body.report_id,
            title=body.title,
            leadership_type=leadership_type,
        )
    return JSON(conversation_json(row), status_code=201)


async def list_conversations(request: Request) -> JSON:
    user = await require_user(request)
    limit = page_limit(request)
    cursor = request.query_params.get("cursor")
    before = _decode_cursor(cursor) if cursor else None
    async with state_of(request).db.acquire() as conn:
        rows = await repo.list_conversations(
            conn, user_id=user.user_id, limit=limit + 1, before=before
        )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode_cursor(rows[-1]["updated_at"], rows[-1]["id"]) if more else None
    return JSON({"items": [conversation_json(r) for r in rows], "next_cursor": next_cursor})


async def get_conversation(request: Request) -> JSON:
    user = await require_user(request)
    conversation_id = path_uuid(request, "conversation_id")
    limit = page_limit(request)
    raw_cursor = request.query_params.get("cursor")
    after = _decode_seq(raw_cursor) if raw_cursor else None
    async with state_of(request).db.acquire() as conn:
        conv = await repo.get_conversation(
            conn, conversation_id=conversation_id, user_id=user.user_id
        )
        rows = await repo.list_messages(
            conn, conversation_id=conversation_id, limit=limit + 1, after_seq=after
        )
    more = len(rows) > limit
    rows = rows[:limit]
    return JSON(
        {
            **conversation_json(conv),
            "messages": [message_json(r) for r in rows],
            "next_cursor": str(rows[-1]["position"]) if more else None,
        }
    )


async def delete_conversation(request: Request) -> Response:
    user = await require_user(request)
    conversation_id = path_uuid(request, "conversation_id")
    async with state_of(request).db.acquire() as conn:
        await repo.delete_conversation(conn, conversation_id=conversation_id, user_id=user.user_id)
    return Response(status_code=204)


routes = [
    Route("/conversations", create_conversation, methods=["POST"], name="conversations:create"),
    Route("/conversations", list_conversations, methods=["GET"], name="conversations:list"),
    Route(
        "/conversations/{conversation_id}",
        get_conversation,
        methods=["GET"],
        name="conversations:get",
    ),
    Route(
        "/conversations/{conversation_id}",
        delete_conversation,
        methods=["DELETE"],
        name="conversations:delete",
    ),
]
