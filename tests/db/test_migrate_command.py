"""`linkcoach migrate` (and `linkcoach token`) open Postgres and nothing else: no Redis,
no Chroma, no embedder, no classifier, no tracer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from linkcoach_stream import resources
from linkcoach_stream.config import Settings
from linkcoach_stream.db.migrate import default_migrations_dir, load_migrations

from ..conftest import ROOT, free_port, fresh_schema_of, settings_env


@pytest.fixture
async def fresh_schema(base_dsn: str) -> AsyncIterator[str]:
    """A DSN whose search path is an empty schema (dropped afterwards)."""
    async with fresh_schema_of(base_dsn, "m") as dsn:
        yield dsn


async def applied_versions(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        return [row["version"] for row in rows]
    finally:
        await conn.close()


def expected_versions() -> list[int]:
    return [m.version for m in load_migrations(default_migrations_dir())]


def unreachable_env(settings: Settings, dsn: str, tmp_path: Path) -> dict[str, str]:
    """Postgres reachable; Redis and Chroma at closed ports; retrieval on; a classifier
    artifact that refuses to load. Opening any of them fails."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "leadership_classifier.skops").write_bytes(b"not a model")
    env = settings_env(settings)
    env.update(
        DATABASE_URL=dsn,
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        RETRIEVAL_ENABLED="true",
        CHROMA_HOST="127.0.0.1",
        CHROMA_PORT=str(free_port()),
        MODELS_DIR=str(models),
        OTEL_ENABLED="true",
        LINKCOACH_DATA_DIR=str(tmp_path / "data"),
    )
    return env


async def test_migrate_applies_every_migration_with_redis_and_chroma_unreachable(
    settings: Settings, fresh_schema: str, tmp_path: Path
) -> None:
    env = unreachable_env(settings, fresh_schema, tmp_path)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "linkcoach_stream.cli", "migrate"],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "migrations applied" in done.stdout
    assert await applied_versions(fresh_schema) == expected_versions()


async def test_token_opens_only_postgres_too(
    settings: Settings, fresh_schema: str, tmp_path: Path
) -> None:
    env = unreachable_env(settings, fresh_schema, tmp_path)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "linkcoach_stream.cli", "token", "--user", "cli-user"],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().count(".") == 2, "not a JWT"
    conn = await asyncpg.connect(fresh_schema)
    try:
        assert await conn.fetchval("SELECT count(*) FROM users WHERE id = 'cli-user'") == 1
    finally:
        await conn.close()


def test_migrate_calls_no_opener_but_postgres(
    settings: Settings, fresh_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from linkcoach_stream.cli import main

    def refuse(name: str):  # type: ignore[no-untyped-def]
        def opener(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"linkcoach migrate opened {name}")

        return opener

    for name in (
        "open_redis",
        "open_retrieval",
        "open_classifier",
        "open_llm",
        "open_tracer",
        "open_app_state",
    ):
        monkeypatch.setattr(resources, name, refuse(name))
    opened: list[str] = []
    real_postgres = resources.open_postgres

    def open_postgres(s: Settings):  # type: ignore[no-untyped-def]
        opened.append(s.database_url or "")
        return real_postgres(s)

    monkeypatch.setattr(resources, "open_postgres", open_postgres)
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DATABASE_URL", fresh_schema)
    monkeypatch.setattr("linkcoach_stream.cli.configure_logging", lambda level: None)
    assert main(["migrate"]) == 0
    assert opened == [fresh_schema]
    assert asyncio.run(applied_versions(fresh_schema)) == expected_versions()
