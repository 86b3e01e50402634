"""Refresh tokens, stored only as SHA-256 hashes and rotated within a family."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg


async def insert(
    conn: asyncpg.Connection,
    *,
    user_id: str,
    family_id: uuid.UUID,
    token_hash: bytes,
    expires_at: datetime,
) -> uuid.UUID:
    token_id = uuid.uuid4()
    await conn.execute(
        """
        INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at)
        VALUES ($1, $2, $3, $4, $5)
        """,
        token_id,
        user_id,
        family_id,
        token_hash,
        expires_at,
    )
    return token_id


async def get_for_update(conn: asyncpg.Connection, *, token_hash: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """
        SELECT t.id, t.user_id, t.family_id, t.expires_at, t.used_at, t.revoked_at,
               u.email, u.leadership_type, u.deleted_at
        FROM refresh_tokens t JOIN users u ON u.id = t.user_id
        WHERE t.token_hash = $1
        FOR UPDATE OF t
        """,
        token_hash,
    )


async def mark_used(conn: asyncpg.Connection, *, token_id: uuid.UUID) -> None:
    await conn.execute("UPDATE refresh_tokens SET used_at = now() WHERE id = $1", token_id)


async def revoke_family(conn: asyncpg.Connection, *, family_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
        family_id,
    )
