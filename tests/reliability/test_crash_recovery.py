"""Answers whose producer died without a word: a server process killed with SIGKILL in
the middle of a stream, and `streaming` rows left with no producer lease."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from linkcoach_stream.config import Settings
from linkcoach_stream.db.pool import _init_connection as init_connection
from linkcoach_stream.db.repositories import conversations as repo
from tests.conftest import (
    SSE,
    RunningServer,
    ServerProcess,
    User,
    gemini_settings,
    make_user,
    read_sse,
    serving,
    text_of,
    until,
)

STREAM = "/api/v1/coaching/query/stream"
# The promise: a reader learns of a dead producer within this long after its death.
LOST_WITHIN_S = 15.0


async def _message(dsn: str, message_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT * FROM messages WHERE id = $1", uuid.UUID(message_id))
    finally:
        await conn.close()
    assert row is not None
    return row


async def _sse(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> list[SSE]:
    async with client.stream(method, url, **kw) as r:
        assert r.status_code == 200, await r.aread()
        return await read_sse(r)


async def _ws_resume(url: str, user: User, message_id: str, after: int) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    ws_url = url.replace("http://", "ws://") + "/api/v1/coaching/ws"
    async with connect(ws_url, subprotocols=["bearer", user.token]) as ws:  # type: ignore[list-item]
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(
            json.dumps({"type": "resume", "message_id": message_id, "last_event_id": after})
        )
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(await ws.recv()))
    return frames


async def test_sigkilled_producer_resume_retry_and_ws_end_with_stream_lost_within_15_s(
    settings: Settings, emulator: str
) -> None:
    proc_settings = gemini_settings(settings, emulator)
    first = await ServerProcess(proc_settings).start()
    second: ServerProcess | None = None
    try:
        async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
            user = await make_user(client)
            r = await client.post("/api/v1/conversations", json={}, headers=user.headers)
            conv = r.json()
            body = {
                "question": "강제 종료된 서버 [[emulator:chunks=3000,chunk_interval_ms=30]]",
                "conversation_id": conv["id"],
                "client_message_id": "kill-1",
            }
            events: list[SSE] = []
            async with client.stream("POST", STREAM, json=body, headers=user.headers) as r:
                reader = asyncio.create_task(read_sse(r, on_event=events))
                await until(lambda: len(events) >= 6, what="six events", task=reader)
                assert first.proc is not None
                first.proc.kill()
                killed_at = time.monotonic()
                await first.proc.wait()
                # The connection just breaks: no last event from a killed process.
                with contextlib.suppress(httpx.HTTPError):
                    await asyncio.wait_for(reader, 10)
        assert [e.event for e in events[:2]] == ["meta", "delta"]
        assert not any(e.event in ("done", "error") for e in events)
        mid = events[0].data["message_id"]
        last_id = events[-1].id
        assert last_id is not None

        # A new process on the same Postgres and Redis; the killed one's lease runs out.
        second = await ServerProcess(proc_settings).start()
        async with httpx.AsyncClient(base_url=second.url, timeout=30) as other:
            resume = _sse(
                other,
                "GET",
                f"/api/v1/coaching/streams/{mid}",
                headers={**user.headers, "Last-Event-ID": str(last_id)},
            )
            retry = _sse(other, "POST", STREAM, json=body, headers=user.headers)
            ws_resume = _ws_resume(second.url, user, mid, last_id)
            resumed, retried, ws_frames = await asyncio.wait_for(
                asyncio.gather(resume, retry, ws_resume), LOST_WITHIN_S + 10
            )
            ended_at = time.monotonic()
            assert ended_at - killed_at < LOST_WITHIN_S, ended_at - killed_at

            # The resume goes on from the last id seen and ends with `stream_lost`.
            assert resumed[0].id == last_id + 1
            assert [e.event for e in resumed][-1] == "error"
            assert resumed[-1].data["code"] == "stream_lost"
            assert resumed[-1].data["message_id"] == mid
            # The retry is the same turn, not a second generation, and ends the same way.
            assert retried[0].event == "meta" and retried[0].data["message_id"] == mid
            assert retried[-1].event == "error" and retried[-1].data["code"] == "stream_lost"
            # A WebSocket `resume` ends the same way.
            assert ws_frames[-1]["type"] == "error" and ws_frames[-1]["code"] == "stream_lost"
            assert ws_frames[-1]["message_id"] == mid

            row = await _message(settings.database_url or "", mid)
            assert row["status"] == "interrupted" and row["finish_reason"] == "stream_lost"
            seen, stored = text_of(events), row["content"]
            assert stored and (seen.startswith(stored) or stored.startswith(seen))

            # Once settled, a retry answers at once: the stored text, then `stream_lost`.
            t0 = time.monotonic()
            again = await asyncio.wait_for(
                _sse(other, "POST", STREAM, json=body, headers=user.headers), 5
            )
            assert time.monotonic() - t0 < 3
            assert again[0].data["message_id"] == mid and again[0].data["replay"] is True
            assert text_of(again) == row["content"]
            assert again[-1].event == "error" and again[-1].data["code"] == "stream_lost"
            assert again[-1].data["partial"] is True
            # And a cancel answers with the final status instead of "cancelling".
            c = await other.post(f"/api/v1/coaching/streams/{mid}/cancel", headers=user.headers)
            assert c.status_code == 200
            assert c.json() == {"message_id": mid, "status": "interrupted", "cancelled": False}
    finally:
        await first.stop()
        if second is not None:
            await second.stop()


# -- rows left `streaming` with no producer ----------------------------------------------


@pytest.fixture(scope="module")
async def sweeping(settings: Settings) -> AsyncIterator[RunningServer]:
    async with serving(
        settings.with_overrides(stream_lease_ttl_s=2.0, stream_sweep_interval_s=0.5)
    ) as running:
        yield running


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.redis_url or "")
    try:
        yield client
    finally:
        await client.aclose()


def _lease_key(settings: Settings, message_id: uuid.UUID) -> str:
    # The key other instances (and the previous version) read: part of the protocol.
    return f"{settings.redis_prefix}live:{message_id}"


async def _orphan(dsn: str, user: User) -> uuid.UUID:
    """A turn stored as a producer would store it, with no producer behind it."""
    message_id = uuid.uuid4()
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    try:
        await repo.start_conversation(
            conn,
            conversation_id=uuid.uuid4(),
            user_id=user.user_id,
            report_id=None,
            title="고아 메시지",
            leadership_type="HHH",
            question="생산자가 사라진 답변",
            client_message_id=None,
            assistant_id=message_id,
            provider="offline",
            model=None,
            sources=[],
        )
        await conn.execute(
            "UPDATE messages SET content = $2 WHERE id = $1", message_id, "부분 답변입니다"
        )
    finally:
        await conn.close()
    return message_id


async def _wait_status(dsn: str, message_id: uuid.UUID, timeout: float) -> asyncpg.Record:
    deadline = time.monotonic() + timeout
    while True:
        row = await _message(dsn, str(message_id))
        if row["status"] != "streaming" or time.monotonic() > deadline:
            return row
        await asyncio.sleep(0.1)


async def test_the_sweep_marks_a_streaming_row_without_a_lease_interrupted(
    sweeping: RunningServer, settings: Settings, redis: aioredis.Redis
) -> None:
    dsn = settings.database_url or ""
    async with httpx.AsyncClient(base_url=sweeping.url, timeout=30) as client:
        user = await make_user(client)
        orphan = await _orphan(dsn, user)
        held = await _orphan(dsn, user)
        # Another instance's producer, alive: it holds its lease.
        await redis.set(_lease_key(settings, held), b"1", px=60_000)

        row = await _wait_status(dsn, orphan, 2.0 + 4 * 0.5 + 3)
        assert row["status"] == "interrupted" and row["finish_reason"] == "stream_lost"
        assert row["content"] == "부분 답변입니다"
        # A row is presumed alive for one lease period after it was written.
        assert (row["updated_at"] - row["created_at"]).total_seconds() >= 2.0
        # The row whose lease is held was looked at by the same sweeps and left alone.
        await asyncio.sleep(1.0)
        assert (await _message(dsn, str(held)))["status"] == "streaming"

        c = await client.post(f"/api/v1/coaching/streams/{orphan}/cancel", headers=user.headers)
        assert c.status_code == 200
        assert c.json() == {"message_id": str(orphan), "status": "interrupted", "cancelled": False}
        replay = await asyncio.wait_for(
            _sse(client, "GET", f"/api/v1/coaching/streams/{orphan}", headers=user.headers), 5
        )
        assert [e.event for e in replay] == ["meta", "delta", "error"]
        assert text_of(replay) == "부분 답변입니다"
        assert replay[-1].data["code"] == "stream_lost"

        # Its producer dies too: the lease is gone and the next sweeps settle it.
        await redis.delete(_lease_key(settings, held))
        row = await _wait_status(dsn, held, 4 * 0.5 + 3)
        assert row["status"] == "interrupted" and row["finish_reason"] == "stream_lost"


@pytest.fixture(scope="module")
async def not_sweeping(settings: Settings) -> AsyncIterator[RunningServer]:
    async with serving(
        settings.with_overrides(stream_lease_ttl_s=2.0, stream_sweep_interval_s=0)
    ) as running:
        yield running


async def test_cancel_of_a_message_whose_producer_died_answers_its_final_status(
    not_sweeping: RunningServer, settings: Settings, redis: aioredis.Redis
) -> None:
    dsn = settings.database_url or ""
    async with httpx.AsyncClient(base_url=not_sweeping.url, timeout=30) as client:
        user = await make_user(client)
        dead, alive, fresh = [await _orphan(dsn, user) for _ in range(3)]
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "UPDATE messages SET updated_at = now() - interval '1 minute' "
                "WHERE id = ANY($1::uuid[])",
                [dead, alive],
            )
        finally:
            await conn.close()
        await redis.set(_lease_key(settings, alive), b"1", px=60_000)

        c = await client.post(f"/api/v1/coaching/streams/{dead}/cancel", headers=user.headers)
        assert c.status_code == 200
        assert c.json() == {"message_id": str(dead), "status": "interrupted", "cancelled": False}
        assert (await _message(dsn, str(dead)))["finish_reason"] == "stream_lost"

        # A producer holding its lease, and a row younger than a lease period (its
        # producer's lease may not have reached Redis yet), are asked to stop instead.
        for mid in (alive, fresh):
            c = await client.post(f"/api/v1/coaching/streams/{mid}/cancel", headers=user.headers)
            assert c.status_code == 202, c.text
            assert c.json()["status"] == "cancelling"
            assert (await _message(dsn, str(mid)))["status"] == "streaming"
        await redis.delete(_lease_key(settings, alive))


async def test_resume_of_a_stream_without_producer_ends_with_stream_lost(
    not_sweeping: RunningServer, settings: Settings
) -> None:
    """No sweep runs here: the reader itself finds the lease gone and settles the row."""
    dsn = settings.database_url or ""
    async with httpx.AsyncClient(base_url=not_sweeping.url, timeout=30) as client:
        user = await make_user(client)
        orphan = await _orphan(dsn, user)
        t0 = time.monotonic()
        events = await asyncio.wait_for(
            _sse(
                client,
                "GET",
                f"/api/v1/coaching/streams/{orphan}",
                headers={**user.headers, "Last-Event-ID": "3"},
            ),
            10,
        )
        elapsed = time.monotonic() - t0
        assert [(e.id, e.event) for e in events] == [(4, "error")]
        assert events[0].data["code"] == "stream_lost" and events[0].data["partial"] is True
        # Not before the row had been idle for a lease period (2 s), and soon after.
        assert 1.5 <= elapsed < 2.0 + 3, elapsed
        row = await _message(dsn, str(orphan))
        assert row["status"] == "interrupted" and row["finish_reason"] == "stream_lost"


async def test_a_client_that_saw_the_end_gets_the_end_again_on_any_instance(
    server: RunningServer, not_sweeping: RunningServer
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        user = await make_user(client)
        events = await _sse(
            client, "POST", STREAM, json={"question": "끝까지 본 답변"}, headers=user.headers
        )
    assert events[-1].event == "done"
    mid, end = events[0].data["message_id"], events[-1]
    await asyncio.sleep(0.2)  # let the log reach Redis
    # The producing instance (its job's events) and another one (the Redis log).
    for url in (server.url, not_sweeping.url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            again = await asyncio.wait_for(
                _sse(
                    client,
                    "GET",
                    f"/api/v1/coaching/streams/{mid}",
                    headers={**user.headers, "Last-Event-ID": str(end.id)},
                ),
                5,
            )
        assert [(e.id, e.event, e.data) for e in again] == [(end.id, "done", end.data)]
