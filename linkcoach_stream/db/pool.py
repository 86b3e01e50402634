"""asyncpg pool creation, with JSON codecs so jsonb columns read and write Python values."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from .. import tracing


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


async def _held(conn: asyncpg.Connection) -> None:
    """Called by the pool on every acquire: the request's `db` timing starts."""
    tracing.db_begin()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Also ends the request's `db` timing (the pool calls this on every release).

    Release without asyncpg's reset query (`pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`), one round trip per release. Nothing here leaves session state
    behind: no LISTEN, SET, cursors or session locks outside the migrator, which unlocks
    its own. asyncpg still rolls back a transaction left open."""
    tracing.db_end()


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        setup=_held,
        reset=_keep_session,
        command_timeout=30,
        # Idle connections are recycled so a restarted Postgres is picked up again.
        max_inactive_connection_lifetime=60,
    )
    assert pool is not None
    return pool


async def ping(conn: asyncpg.Connection) -> None:
    """The readiness probe's round trip."""
    await conn.fetchval("SELECT 1")
