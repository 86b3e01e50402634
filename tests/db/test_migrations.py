from __future__ import annotations

import asyncio
import uuid

import asyncpg

from linkcoach_stream.db.migrate import apply_migrations, default_migrations_dir, load_migrations
from tests.conftest import with_search_path


async def _fresh_schema(base: str) -> tuple[str, str]:
    schema = f"m_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(base)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.close()
    return schema, with_search_path(base, schema)


async def _drop(base: str, schema: str) -> None:
    conn = await asyncpg.connect(base)
    await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await conn.close()


async def test_migrations_apply_once_and_rerun_is_a_no_op(base_dsn: str) -> None:
    schema, dsn = await _fresh_schema(base_dsn)
    try:
        conn = await asyncpg.connect(dsn)
        first = await apply_migrations(conn)
        second = await apply_migrations(conn)
        tables = {
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
            )
        }
        recorded = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        await conn.close()
        assert first == [m.version for m in load_migrations(default_migrations_dir())]
        assert second == []
        assert recorded == len(first)
        assert {
            "users",
            "conversations",
            "messages",
            "reports",
            "api_logs",
            "refresh_tokens",
            "schema_migrations",
        } <= tables
    finally:
        await _drop(base_dsn, schema)


async def test_concurrent_migrators_apply_each_migration_exactly_once(base_dsn: str) -> None:
    schema, dsn = await _fresh_schema(base_dsn)
    try:
        conns = [await asyncpg.connect(dsn) for _ in range(4)]
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        for c in conns:
            await c.close()
        applied = sorted(v for r in results for v in r)
        expected = [m.version for m in load_migrations(default_migrations_dir())]
        assert applied == expected
        assert sum(1 for r in results if r) == 1
    finally:
        await _drop(base_dsn, schema)


def test_every_index_is_created_with_create_index() -> None:
    for migration in load_migrations(default_migrations_dir()):
        for line in migration.sql.splitlines():
            stripped = line.strip().upper()
            assert not stripped.startswith("INDEX "), f"MySQL-style inline index: {line}"
