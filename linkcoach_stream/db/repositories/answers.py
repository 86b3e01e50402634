"""Answers as things a user acts on: feedback, and regenerated versions of a reply.

A user message's replies are versions 1..n (`messages.version`); the newest is current
and every older one is `superseded`. A regenerated reply carries `anchor_seq`, the `seq`
of the first version, so it is shown and sent to the model where the first one stood.
Every read is scoped by the owner's user id, so a wrong owner reads like a missing row.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from ...errors import NotFound

ANSWER_COLUMNS = (
    "id, conversation_id, role, status, reply_to, version, superseded, client_message_id, "
    "COALESCE(anchor_seq, seq) AS position"
)
FEEDBACK_COLUMNS = "message_id, rating, comment, created_at, updated_at"


async def get_answer(
    conn: asyncpg.Connection, *, message_id: uuid.UUID, user_id: str
) -> asyncpg.Record:
    """An owned assistant message; NotFound for anything else (a user's own question
    included: only answers take feedback or regenerate)."""
    row = await conn.fetchrow(
        f"""
        SELECT {ANSWER_COLUMNS} FROM messages
        WHERE id = $1 AND user_id = $2 AND role = 'assistant'
        """,
        message_id,
        user_id,
    )
    if row is None:
        raise NotFound("message not found")
    return row


async def upsert_feedback(
    conn: asyncpg.Connection,
    *,
    message_id: uuid.UUID,
    user_id: str,
    rating: str,
    comment: str | None,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""
        INSERT INTO message_feedback (message_id, user_id, rating, comment)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (message_id, user_id)
        DO UPDATE SET rating = EXCLUDED.rating, comment = EXCLUDED.comment, updated_at = now()
        RETURNING {FEEDBACK_COLUMNS}
        """,
        message_id,
        user_id,
        rating,
        comment,
    )
    assert row is not None
    return row


async def find_regeneration(
    conn: asyncpg.Connection, *, conversation_id: uuid.UUID, client_message_id: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""
        SELECT {ANSWER_COLUMNS}, sources FROM messages
        WHERE conversation_id = $1 AND client_message_id = $2 AND role = 'assistant'
        """,
        conversation_id,
        client_message_id,
    )


async def lock_question(conn: asyncpg.Connection, *, message_id: uuid.UUID) -> asyncpg.Record:
    """The user message a reply answers, locked until the transaction ends, so two
    regenerations of it are numbered one after the other."""
    row = await conn.fetchrow(
        "SELECT id, content, seq FROM messages WHERE id = $1 AND role = 'user' FOR UPDATE",
        message_id,
    )
    if row is None:
        raise NotFound("message not found")
    return row


async def current_reply(conn: asyncpg.Connection, *, reply_to: uuid.UUID) -> asyncpg.Record:
    """The current version, with the highest version number any reply to it has."""
    row = await conn.fetchrow(
        f"""
        SELECT {ANSWER_COLUMNS},
               (SELECT max(version) FROM messages v WHERE v.reply_to = $1) AS last_version
        FROM messages WHERE reply_to = $1 AND NOT superseded
        """,
        reply_to,
    )
    if row is None:
        raise NotFound("message not found")
    return row


async def insert_version(
    conn: asyncpg.Connection,
    *,
    message_id: uuid.UUID,
    conversation_id: uuid.UUID,
    user_id: str,
    reply_to: uuid.UUID,
    version: int,
    anchor_seq: int,
    client_message_id: str | None,
    provider: str,
    model: str | None,
    sources: list[dict[str, Any]],
) -> None:
    """Supersede the current reply and add the new, `streaming` one. Run it in the
    transaction that holds `lock_question`'s lock."""
    await conn.execute(
        "UPDATE messages SET superseded = true, updated_at = now() "
        "WHERE reply_to = $1 AND NOT superseded",
        reply_to,
    )
    await conn.execute(
        """
        INSERT INTO messages (id, conversation_id, user_id, role, content, status, reply_to,
                              version, anchor_seq, client_message_id, provider, model, sources)
        VALUES ($1, $2, $3, 'assistant', '', 'streaming', $4, $5, $6, $7, $8, $9, $10)
        """,
        message_id,
        conversation_id,
        user_id,
        reply_to,
        version,
        anchor_seq,
        client_message_id,
        provider,
        model,
        sources,
    )


async def history_before(
    conn: asyncpg.Connection, *, conversation_id: uuid.UUID, position: int, limit: int
) -> list[asyncpg.Record]:
    """What the model saw before the message at `position`: the newest shown turns with
    text, current versions only, oldest first."""
    rows = await conn.fetch(
        """
        SELECT role, content FROM messages
        WHERE conversation_id = $1 AND NOT superseded AND content <> '' AND status <> 'error'
          AND COALESCE(anchor_seq, seq) < $2
        ORDER BY COALESCE(anchor_seq, seq) DESC LIMIT $3
        """,
        conversation_id,
        position,
        limit,
    )
    return list(reversed(rows))


async def get_question(conn: asyncpg.Connection, *, message_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT id, content, seq FROM messages WHERE id = $1 AND role = 'user'", message_id
    )
    if row is None:
        raise NotFound("message not found")
    return row
