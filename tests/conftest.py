"""Shared fixtures: a real Postgres schema and Redis key prefix per test session, a real
uvicorn server on a free port, and users with tokens.

Postgres: TEST_DATABASE_URL or DATABASE_URL when set, else the embedded server. Each
session works in a fresh schema (dropped at the end); each test makes its own users, so
tests never see each other's rows. Redis: TEST_REDIS_URL or REDIS_URL, else embedded,
with a fresh key prefix.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import uvicorn

from linkcoach_stream.app import create_app
from linkcoach_stream.config import Settings

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-api-key-0123456789"
ALLOWED_ORIGIN = "https://parent.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_search_path(dsn: str, schema: str) -> str:
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"]
    query.append(("search_path", schema))
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    # Outside /root: the embedded Postgres opens its parent folders to its own user.
    with tempfile.TemporaryDirectory(prefix="linkcoach-test-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def base_dsn(work_dir: Path) -> Iterator[str]:
    dsn = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if dsn:
        yield dsn
        return
    from linkcoach_stream.embedded.postgres import EmbeddedPostgres

    pg = EmbeddedPostgres(work_dir / "pg")
    try:
        yield pg.start()
    finally:
        pg.stop()


@pytest.fixture(scope="session")
async def database_url(base_dsn: str) -> AsyncIterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(base_dsn)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.close()
    try:
        yield with_search_path(base_dsn, schema)
    finally:
        conn = await asyncpg.connect(base_dsn)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


@pytest.fixture(scope="session")
def redis_url(work_dir: Path) -> Iterator[str]:
    url = os.environ.get("TEST_REDIS_URL") or os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    from linkcoach_stream.embedded.redis import EmbeddedRedis

    server = EmbeddedRedis(work_dir / "redis")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, work_dir: Path) -> Settings:
    return Settings(
        app_env="test",
        data_dir=work_dir / "data",
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=f"lct:{uuid.uuid4().hex[:8]}:",
        db_pool_min=1,
        db_pool_max=10,
        api_keys=(API_KEY,),
        cors_origins=(ALLOWED_ORIGIN,),
        llm_provider="offline",
        knowledge_base_dir=ROOT / "knowledge_base",
        models_dir=ROOT / "models",
        max_body_bytes=64 * 1024,
        persist_interval_s=0.05,
        api_log_flush_interval_s=0.05,
    ).validate()


@dataclass
class RunningServer:
    url: str
    settings: Settings
    server: uvicorn.Server
    app: object


async def start_server(settings: Settings) -> RunningServer:
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    for _ in range(600):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError("server did not start")
    running = RunningServer(f"http://127.0.0.1:{port}", settings, server, app)
    running._task = task  # type: ignore[attr-defined]
    return running


async def stop_server(running: RunningServer) -> None:
    running.server.should_exit = True
    await running._task  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    running = await start_server(settings)
    try:
        yield running
    finally:
        await stop_server(running)


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction that is rolled back after the test."""
    from linkcoach_stream.db.pool import _init_connection

    conn = await asyncpg.connect(database_url)
    await _init_connection(conn)
    tx = conn.transaction()
    await tx.start()
    try:
        yield conn
    finally:
        await tx.rollback()
        await conn.close()


@dataclass
class User:
    user_id: str
    token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def make_user(
    client: httpx.AsyncClient, *, leadership_type: str | None = "HHH", prefix: str = "u"
) -> User:
    user_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
    body: dict[str, str] = {"user_id": user_id}
    if leadership_type:
        body["leadership_type"] = leadership_type
    r = await client.post("/api/v1/auth/token", json=body, headers={"X-API-Key": API_KEY})
    assert r.status_code == 201, r.text
    data = r.json()
    return User(user_id, data["access_token"], data["refresh_token"])


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> User:
    return await make_user(client, prefix="alice")


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> User:
    return await make_user(client, leadership_type="LLL", prefix="bob")
