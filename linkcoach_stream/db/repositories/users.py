"""Users: created or refreshed when a trusted caller mints a token for them."""

from __future__ import annotations

import asyncpg


async def upsert_user(
    conn: asyncpg.Connection, *, user_id: str, email: str | None, leadership_type: str | None
) -> None:
    await conn.execute(
        """
        INSERT INTO users (id, email, leadership_type) VALUES ($1, $2, $3)
        ON CONFLICT (id) DO UPDATE SET
            email = COALESCE(EXCLUDED.email, users.email),
            leadership_type = COALESCE(EXCLUDED.leadership_type, users.leadership_type),
            deleted_at = NULL,
            updated_at = now()
        """,
        user_id,
        email,
        leadership_type,
    )


async def is_active(conn: asyncpg.Connection, *, user_id: str) -> bool:
    row = await conn.fetchrow("SELECT deleted_at FROM users WHERE id = $1", user_id)
    return row is not None and row["deleted_at"] is None


async def delete_user(conn: asyncpg.Connection, *, user_id: str) -> bool:
    """Hard-delete a user and (by cascade) everything they own."""
    result = await conn.execute("DELETE FROM users WHERE id = $1", user_id)
    return result.endswith(" 1")
