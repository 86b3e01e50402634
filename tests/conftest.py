"""Shared fixtures: a real Postgres schema and Redis key prefix per test session, a real
uvicorn server on a free port, and users with tokens.

Postgres: TEST_DATABASE_URL or DATABASE_URL when set, else the embedded server. Each
session works in a fresh schema (dropped at the end); each test makes its own users, so
tests never see each other's rows. Redis: TEST_REDIS_URL or REDIS_URL, else embedded,
with a fresh key prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import uvicorn

from linkcoach_stream.app import create_app
from linkcoach_stream.config import SETTINGS, Settings
from linkcoach_stream.state import STATE_KEY, AppState

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-api-key-0123456789"
# The test environment gets no development defaults: it sets a secret like a deployment.
JWT_SECRET = "t3st-Secret_" + uuid.uuid4().hex
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


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """Commands run in-process (`cli.main`) point the root logger at the test's captured
    stdout or stderr, which pytest closes after the test: put the handlers back, so a
    later test's warnings are not written to a closed file."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


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


@contextlib.asynccontextmanager
async def fresh_schema_of(base_dsn: str, prefix: str) -> AsyncIterator[str]:
    """A DSN whose search path is a new empty schema, dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
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
async def database_url(base_dsn: str) -> AsyncIterator[str]:
    async with fresh_schema_of(base_dsn, "t") as dsn:
        yield dsn


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
        jwt_secret_key=JWT_SECRET,
        cors_origins=(ALLOWED_ORIGIN,),
        llm_provider="offline",
        knowledge_base_dir=ROOT / "knowledge_base",
        models_dir=ROOT / "models",
        max_body_bytes=64 * 1024,
        persist_interval_s=0.05,
        api_log_flush_interval_s=0.05,
        retrieval_enabled=False,
        stream_ping_interval_s=5,
        # Many tests fail auth on purpose from one address; the limit has its own tests.
        rate_auth_failures_per_min=0.0,
        # The test process starts hundreds of apps: leave its collector alone
        # (tests/api/test_gc_tuning.py covers the settings).
        gc_freeze=False,
        gc_thresholds=(),
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
    for _ in range(3600):  # first start may ingest the knowledge base
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


def state_in(running: RunningServer) -> AppState:
    """The running server's application state (what its handlers see)."""
    state = running.server.lifespan.state[STATE_KEY]  # type: ignore[attr-defined]
    assert isinstance(state, AppState)
    return state


async def stop_server(running: RunningServer) -> None:
    running.server.should_exit = True
    await running._task  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[RunningServer]:
    """A server with these settings for the length of the block (a module's own server)."""
    running = await start_server(settings)
    try:
        yield running
    finally:
        await stop_server(running)


@contextlib.asynccontextmanager
async def client_of(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    async with serving(settings) as running:
        yield running


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(server) as c:
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


# -- streaming helpers -------------------------------------------------------------------


@dataclass
class SSE:
    id: int | None
    event: str
    data: dict


async def read_sse(
    response: httpx.Response,
    *,
    stop_after: int | None = None,
    on_event: list[SSE] | None = None,
) -> list[SSE]:
    """Parse an SSE response into events (comments/pings skipped)."""
    import json

    events: list[SSE] = on_event if on_event is not None else []
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                events.append(
                    SSE(
                        int(fields["id"]) if "id" in fields else None,
                        fields.get("event", "message"),
                        json.loads(fields["data"]),
                    )
                )
                if events[-1].event in ("done", "error"):
                    break
                if stop_after is not None and len(events) >= stop_after:
                    break
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value
    return events


async def until(
    condition: Callable[[], object],
    *,
    timeout: float = 15.0,
    what: str = "the condition",
    task: asyncio.Task[Any] | None = None,
) -> None:
    """Poll `condition` every 20 ms until it is true; fail instead of hanging when it is
    not within `timeout`. With `task` (e.g. the reader filling the list polled), its
    failure is raised as soon as it ends, and its end stops the wait."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if task is not None and task.done():
            task.result()
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(
    config: uvicorn.Config, *, what: str = "the server's start", start_timeout: float = 15.0
) -> AsyncIterator[uvicorn.Server]:
    """uvicorn serving `config` in this event loop until the block ends."""
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started, what=what, task=task, timeout=start_timeout)
        yield server
    finally:
        server.should_exit = True
        await task


def text_of(events: list[SSE]) -> str:
    return "".join(e.data["text"] for e in events if e.event == "delta")


@pytest.fixture(scope="session")
async def emulator() -> AsyncIterator[str]:
    from linkcoach_stream.emulator.config import EmulatorConfig
    from linkcoach_stream.emulator.gemini import create_emulator_app

    app = create_emulator_app(
        EmulatorConfig(
            ttft_ms_min=30,
            ttft_ms_max=60,
            chunk_interval_ms_min=20,
            chunk_interval_ms_max=30,
            chunks=12,
            chunk_chars=7,
            api_key=None,
            seed=7,
        )
    )
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    async with running(config, what="the emulator's start"):
        yield f"http://127.0.0.1:{port}"


def gemini_settings(settings: Settings, emulator: str) -> Settings:
    return settings.with_overrides(
        llm_provider="gemini",
        gemini_api_key="emulator-key",
        gemini_base_url=emulator,
        llm_first_chunk_timeout_s=3.0,
        llm_idle_timeout_s=1.5,
        llm_retries=1,
    )


@pytest.fixture(scope="session")
async def gemini_server(settings: Settings, emulator: str) -> AsyncIterator[RunningServer]:
    async with serving(gemini_settings(settings, emulator)) as running:
        yield running


@pytest.fixture
async def gclient(gemini_server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(gemini_server) as c:
        yield c


async def emulator_stats(emulator: str) -> dict:
    async with httpx.AsyncClient() as c:
        return (await c.get(f"{emulator}/_emulator/stats")).json()


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a separate process use the same settings as `settings`."""
    names = {setting.env for setting in SETTINGS}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEST_", "GEMINI_")) and k not in names
    }
    env.update(settings.to_env(), LOG_LEVEL="warning")
    return env


class ServerProcess:
    """`uvicorn` serving the app factory in a separate OS process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> ServerProcess:
        import sys

        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "uvicorn",
            "linkcoach_stream.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ws",
            # What `linkcoach serve` runs: sockets get the shutdown grace and farewell.
            "linkcoach_stream.server:GracefulWebSocketProtocol",
            "--no-access-log",
            "--log-level",
            "warning",
            env=settings_env(self.settings),
            cwd=str(ROOT),
        )
        async with httpx.AsyncClient() as c:
            for _ in range(300):
                try:
                    if (await c.get(f"{self.url}/health")).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                if self.proc.returncode is not None:
                    raise RuntimeError("server process exited")
                await asyncio.sleep(0.1)
        raise RuntimeError("server process did not start")

    async def stop(self, sig: int = 15) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return int(self.proc.returncode or 0)
