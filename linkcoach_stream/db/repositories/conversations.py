"""Conversations and their messages. Every query is scoped by the owner's user id, so a
wrong owner reads exactly like a missing row."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from ...errors import NotFound
from ...llm.base import Usage
from . import usage as usage_repo

CONVERSATION_COLUMNS = "id, user_id, report_id, title, leadership_type, created_at, updated_at"
MESSAGE_COLUMNS = (
    "id, seq, conversation_id, role, content, status, reply_to, client_message_id, provider, "
    "model, prompt_tokens, completion_tokens, total_tokens, ttft_ms, latency_ms, finish_reason, "
    "error_code, cancel_reason, sources, created_at, updated_at"
)


async def create_conversation(
    conn: asyncpg.Connection,
    *,
    user_id: str,
    report_id: uuid.UUID | None = None,
    title: str | None = None,
    leadership_type: str | None = None,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""
        INSERT INTO conversations (id, user_id, report_id, title, leadership_type)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING {CONVERSATION_COLUMNS}
        """,
        uuid.uuid4(),
        user_id,
        report_id,
        title,
        leadership_type,
    )
    assert row is not None
    return row


async def start_conversation(
    conn: asyncpg.Connection,
    *,
    conversation_id: uuid.UUID,
    user_id: str,
    report_id: uuid.UUID | None,
    title: str | None,
    leadership_type: str | None,
    question: str,
    client_message_id: str | None,
    assistant_id: uuid.UUID,
    provider: str,
    model: str | None,
    sources: list[dict[str, Any]],
) -> bool:
    """A new conversation with its first user message and the `streaming` reply, in one
    statement (one round trip, one implicit transaction), if the user exists and is not
    deleted; False (nothing written) if not. The reply's insert reads the user message's
    row, so the user message is numbered first."""
    status = await conn.execute(
        """
        WITH c AS (
            INSERT INTO conversations (id, user_id, report_id, title, leadership_type)
            SELECT $1, $2, $3, $4, $5
            WHERE EXISTS (SELECT 1 FROM users WHERE id = $2 AND deleted_at IS NULL)
            RETURNING id
        ), u AS (
            INSERT INTO messages (id, conversation_id, user_id, role, content, status,
                                  client_message_id)
            SELECT $6, c.id, $2, 'user', $7, 'complete', $8 FROM c
            RETURNING id
        )
        INSERT INTO messages (id, conversation_id, user_id, role, content, status, reply_to,
                              provider, model, sources)
        SELECT $9, c.id, $2, 'assistant', '', 'streaming', u.id, $10, $11, $12 FROM c, u
        """,
        conversation_id,
        user_id,
        report_id,
        title,
        leadership_type,
        uuid.uuid4(),
        question,
        client_message_id,
        assistant_id,
        provider,
        model,
        sources,
    )
    return bool(status.endswith(" 1"))


async def get_conversation(
    conn: asyncpg.Connection, *, conversation_id: uuid.UUID, user_id: str
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1 AND user_id = $2",
        conversation_id,
        user_id,
    )
    if row is None:
        raise NotFound("conversation not found")
    return row


async def list_conversations(
    conn: asyncpg.Connection,
    *,
    user_id: str,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[asyncpg.Record]:
    if before is None:
        return await conn.fetch(
            f"""
            SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE user_id = $1
            ORDER BY updated_at DESC, id DESC LIMIT $2
            """,
            user_id,
            limit,
        )
    return await conn.fetch(
        f"""
        SELECT {CONVERSATION_COLUMNS} FROM conversations
        WHERE user_id = $1 AND (updated_at, id) < ($2, $3)
        ORDER BY updated_at DESC, id DESC LIMIT $4
        """,
        user_id,
        before[0],
        before[1],
        limit,
    )


async def delete_conversation(
    conn: asyncpg.Connection, *, conversation_id: uuid.UUID, user_id: str
) -> None:
    result = await conn.execute(
        "DELETE FROM conversations WHERE id = $1 AND user_id = $2", conversation_id, user_id
    )
    if result != "DELETE 1":
        raise NotFound("conversation not found")


async def touch_conversation(
    conn: asyncpg.Connection, *, conversation_id: uuid.UUID, title: str | None = None
) -> None:
    await conn.execute(
        "UPDATE conversations SET updated_at = now(), title = COALESCE(title, $2) WHERE id = $1",
        conversation_id,
        title,
    )


async def list_messages(
    conn: asyncpg.Connection,
    *,
    conversation_id: uuid.UUID,
    limit: int,
    after_seq: int | None = None,
) -> list[asyncpg.Record]:
    """Shown messages in order, after position `after_seq`: current reply versions only,
    each with its feedback and the ids of all its versions (`answers.py`)."""
    return await conn.fetch(
        f"""
        SELECT m.*, f.rating AS feedback_rating, f.comment AS feedback_comment,
               f.updated_at AS feedback_updated_at, v.version_ids
        FROM (
            SELECT {MESSAGE_COLUMNS}, version, COALESCE(anchor_seq, seq) AS position
            FROM messages
            WHERE conversation_id = $1 AND NOT superseded AND COALESCE(anchor_seq, seq) > $2
            ORDER BY COALESCE(anchor_seq, seq) LIMIT $3
        ) m
        LEFT JOIN message_feedback f ON f.message_id = m.id
        LEFT JOIN LATERAL (
            SELECT array_agg(r.id ORDER BY r.version) AS version_ids FROM messages r
            WHERE m.role = 'assistant' AND r.reply_to = m.reply_to
        ) v ON true
        ORDER BY m.position
        """,
        conversation_id,
        after_seq or 0,
        limit,
    )


async def recent_history(
    conn: asyncpg.Connection, *, conversation_id: uuid.UUID, limit: int
) -> list[asyncpg.Record]:
    """The newest completed or partial turns, oldest first, for the prompt (current
    versions of regenerated replies, where their first version stood)."""
    rows = await conn.fetch(
        """
        SELECT role, content FROM messages
        WHERE conversation_id = $1 AND content <> '' AND status <> 'error' AND NOT superseded
        ORDER BY COALESCE(anchor_seq, seq) DESC LIMIT $2
        """,
        conversation_id,
        limit,
    )
    return list(reversed(rows))


async def recent_tails(
    conn: asyncpg.Connection,
    *,
    user_id: str,
    conversations: int,
    messages: int,
    prefix_chars: int,
) -> list[asyncpg.Record]:
    """The last `messages` shown messages (the start of each, `prefix_chars` long) of the
    user's `conversations` most recently updated conversations, one statement: rows of
    (conversation_id, updated_at, role, content), newest conversation first, each
    conversation's messages oldest first. Failed and still empty replies are left out:
    a client never showed their text."""
    return await conn.fetch(
        """
        SELECT c.id AS conversation_id, c.updated_at, m.role, m.content
        FROM (
            SELECT id, updated_at FROM conversations WHERE user_id = $1
            ORDER BY updated_at DESC, id DESC LIMIT $2
        ) c
        CROSS JOIN LATERAL (
            SELECT COALESCE(anchor_seq, seq) AS seq, role, left(content, $4) AS content
            FROM messages
            WHERE conversation_id = c.id AND content <> '' AND status <> 'error'
              AND NOT superseded
            ORDER BY COALESCE(anchor_seq, seq) DESC LIMIT $3
        ) m
        ORDER BY c.updated_at DESC, c.id, m.seq
        """,
        user_id,
        conversations,
        messages,
        prefix_chars,
    )


async def insert_user_message(
    conn: asyncpg.Connection,
    *,
    conversation_id: uuid.UUID,
    user_id: str,
    content: str,
    client_message_id: str | None,
) -> asyncpg.Record | None:
    """Insert the user's message; None when the same client_message_id already exists."""
    return await conn.fetchrow(
        f"""
        INSERT INTO messages (id, conversation_id, user_id, role, content, status,
                              client_message_id)
        VALUES ($1, $2, $3, 'user', $4, 'complete', $5)
        ON CONFLICT (conversation_id, client_message_id)
            WHERE role = 'user' AND client_message_id IS NOT NULL
        DO NOTHING
        RETURNING {MESSAGE_COLUMNS}
        """,
        uuid.uuid4(),
        conversation_id,
        user_id,
        content,
        client_message_id,
    )


async def find_turn_by_client_id(
    conn: asyncpg.Connection, *, conversation_id: uuid.UUID, client_message_id: str
) -> tuple[asyncpg.Record, asyncpg.Record | None] | None:
    user_msg = await conn.fetchrow(
        f"""
        SELECT {MESSAGE_COLUMNS} FROM messages
        WHERE conversation_id = $1 AND client_message_id = $2 AND role = 'user'
        """,
        conversation_id,
        client_message_id,
    )
    if user_msg is None:
        return None
    reply = await conn.fetchrow(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE reply_to = $1 AND NOT superseded",
        user_msg["id"],
    )
    return user_msg, reply


async def insert_assistant_message(
    conn: asyncpg.Connection,
    *,
    message_id: uuid.UUID,
    conversation_id: uuid.UUID,
    user_id: str,
    reply_to: uuid.UUID,
    provider: str,
    model: str | None,
    sources: list[dict[str, Any]],
) -> None:
    await conn.execute(
        """
        INSERT INTO messages (id, conversation_id, user_id, role, content, status, reply_to,
                              provider, model, sources)
        VALUES ($1, $2, $3, 'assistant', '', 'streaming', $4, $5, $6, $7)
        """,
        message_id,
        conversation_id,
        user_id,
        reply_to,
        provider,
        model,
        sources,
    )


_FINISH = """
        UPDATE messages SET content = $2, status = $3, finish_reason = $4, error_code = $5,
               prompt_tokens = $6, completion_tokens = $7, total_tokens = $8,
               ttft_ms = $9, latency_ms = $10, cancel_reason = $11, updated_at = now()
               {billing}
        WHERE id = $1
"""
# A billed turn also stores its cached/thought counts and adds itself to its owner's day.
_FINISH_BILLED = f"""
        WITH m AS (
            {
    _FINISH.format(billing=", cached_tokens = $12, thought_tokens = $13, usage_estimated = $14")
}
            RETURNING user_id
        )
        INSERT INTO usage_daily (user_id, day, turns, estimated_turns, prompt_tokens,
                                 completion_tokens, cached_tokens, thought_tokens)
        SELECT m.user_id, (now() AT TIME ZONE $15)::date, 1, $14::boolean::int, $16, $17,
               coalesce($12, 0), coalesce($13, 0)
        FROM m
        {usage_repo.ADD_TO_DAY}
"""


async def finish_message(
    conn: asyncpg.Connection,
    *,
    message_id: uuid.UUID,
    content: str,
    status: str,
    finish_reason: str | None,
    error_code: str | None,
    cancel_reason: str | None,
    usage: dict[str, int | None],
    ttft_ms: int | None,
    latency_ms: int | None,
    billed: Usage | None = None,
    timezone: str = "UTC",
) -> None:
    """The answer's final state, in one statement: with `billed`, the turn's usage is
    added to its owner's day in the same statement (both or neither)."""
    fields = (
        message_id,
        content,
        status,
        finish_reason,
        error_code,
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        usage.get("total_tokens"),
        ttft_ms,
        latency_ms,
        cancel_reason,
    )
    if billed is None:
        await conn.execute(_FINISH.format(billing=""), *fields)
        return
    await conn.execute(
        _FINISH_BILLED,
        *fields,
        billed.cached_tokens,
        billed.thought_tokens,
        billed.estimated,
        timezone,
        billed.prompt_tokens or 0,
        billed.completion_tokens or 0,
    )


async def get_message(
    conn: asyncpg.Connection, *, message_id: uuid.UUID, user_id: str
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1 AND user_id = $2",
        message_id,
        user_id,
    )
    if row is None:
        raise NotFound("message not found")
    return row


async def interrupt_stale_streaming(conn: asyncpg.Connection, *, older_than_s: float) -> int:
    """Mark `streaming` rows whose writer is gone (no update for a while) as interrupted."""
    result = await conn.execute(
        """
        UPDATE messages SET status = 'interrupted', finish_reason = 'server_restart',
               updated_at = now()
        WHERE status = 'streaming' AND updated_at < now() - make_interval(secs => $1)
        """,
        older_than_s,
    )
    return int(result.split()[-1])


async def idle_streaming_ids(
    conn: asyncpg.Connection, *, idle_s: float, limit: int
) -> list[uuid.UUID]:
    """`streaming` messages not written to for `idle_s` (read through the partial index
    on `status = 'streaming'`): the candidates whose producer may be gone."""
    rows = await conn.fetch(
        """
        SELECT id FROM messages
        WHERE status = 'streaming' AND updated_at < now() - make_interval(secs => $1)
        ORDER BY updated_at LIMIT $2
        """,
        idle_s,
        limit,
    )
    return [row["id"] for row in rows]


async def interrupt_lost_streams(
    conn: asyncpg.Connection, *, message_ids: list[uuid.UUID], idle_s: float
) -> int:
    """Mark these messages `interrupted` (`stream_lost`) if they are still `streaming`
    and still idle: a row written to since it was picked is alive after all."""
    if not message_ids:
        return 0
    result = await conn.execute(
        """
        UPDATE messages SET status = 'interrupted', finish_reason = 'stream_lost',
               updated_at = now()
        WHERE id = ANY($1::uuid[]) AND status = 'streaming'
          AND updated_at < now() - make_interval(secs => $2)
        """,
        message_ids,
        idle_s,
    )
    return int(result.split()[-1])


async def interrupt_lost_message(
    conn: asyncpg.Connection, *, message_id: uuid.UUID, idle_s: float
) -> asyncpg.Record:
    """Mark one message whose producer is gone `interrupted` (`stream_lost`) unless it is
    final already or was written to within `idle_s`; the row as it now stands, either
    way. Both halves read the snapshot taken before the update, so exactly one of them
    returns the row."""
    row = await conn.fetchrow(
        f"""
        WITH lost AS (
            UPDATE messages SET status = 'interrupted', finish_reason = 'stream_lost',
                   updated_at = now()
            WHERE id = $1 AND status = 'streaming'
              AND updated_at < now() - make_interval(secs => $2)
            RETURNING {MESSAGE_COLUMNS}
        )
        SELECT {MESSAGE_COLUMNS} FROM lost
        UNION ALL
        SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM lost)
        """,
        message_id,
        idle_s,
    )
    if row is None:
        raise NotFound("message not found")
    return row


async def write_partial_answers(
    conn: asyncpg.Connection, *, texts: Sequence[tuple[uuid.UUID, str]]
) -> None:
    """The text so far of each answer still `streaming`, in one statement for the whole
    batch; a row that reached its final status meanwhile keeps its final text."""
    await conn.execute(
        """
        UPDATE messages AS m SET content = t.content, updated_at = now()
        FROM unnest($1::uuid[], $2::text[]) AS t(id, content)
        WHERE m.id = t.id AND m.status = 'streaming'
        """,
        [key for key, _ in texts],
        [text for _, text in texts],
    )
