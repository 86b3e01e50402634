"""Two instances behind the same Postgres and Redis: one in this process, one a separate
uvicorn process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from linkcoach_stream.config import Settings
from tests.conftest import (
    RunningServer,
    ServerProcess,
    gemini_settings,
    make_user,
    read_sse,
    text_of,
    until,
)

STREAM = "/api/v1/coaching/query/stream"


@pytest.fixture(scope="module")
async def second_instance(settings, emulator) -> AsyncIterator[ServerProcess]:  # type: ignore[no-untyped-def]
    proc = await ServerProcess(gemini_settings(settings, emulator)).start()
    try:
        yield proc
    finally:
        await proc.stop()


async def test_disconnect_then_resume_on_another_instance_yields_the_full_answer(
    gemini_server: RunningServer, gclient: httpx.AsyncClient, second_instance: ServerProcess
) -> None:
    user = await make_user(gclient)
    q = "끊겼다 이어받기 [[emulator:chunks=40,chunk_interval_ms=40]]"
    async with gclient.stream("POST", STREAM, json={"question": q}, headers=user.headers) as r:
        first = await read_sse(r, stop_after=5)
    # The client dropped after 5 events; the generation goes on without it.
    last_id = first[-1].id
    mid = first[0].data["message_id"]
    async with httpx.AsyncClient(base_url=second_instance.url, timeout=30) as other:
        async with other.stream(
            "GET",
            f"/api/v1/coaching/streams/{mid}",
            headers={**user.headers, "Last-Event-ID": str(last_id)},
        ) as r:
            assert r.status_code == 200
            rest = await read_sse(r)
    ids = [e.id for e in first + rest]
    assert ids == list(range(1, len(ids) + 1)), "gap or duplicate in event ids"
    assert rest[-1].event == "done"
    full = text_of(first) + text_of(rest)
    conn = await asyncpg.connect(gemini_server.settings.database_url)
    row = await conn.fetchrow("SELECT content, status FROM messages WHERE id = $1", uuid.UUID(mid))
    await conn.close()
    assert row["status"] == "complete"
    assert row["content"] == full
    assert len(full) == 40 * 7


async def test_cancel_sent_to_another_instance_stops_the_generation(
    gemini_server: RunningServer, gclient: httpx.AsyncClient, second_instance: ServerProcess
) -> None:
    user = await make_user(gclient)
    q = "취소 테스트 [[emulator:chunks=300,chunk_interval_ms=30]]"
    async with gclient.stream("POST", STREAM, json={"question": q}, headers=user.headers) as r:
        events: list = []
        reader = asyncio.create_task(read_sse(r, on_event=events))
        await until(lambda: bool(events), what="the meta event", task=reader)
        await asyncio.sleep(0.3)
        mid = events[0].data["message_id"] if events else None
        assert mid
        async with httpx.AsyncClient(base_url=second_instance.url, timeout=30) as other:
            c = await other.post(f"/api/v1/coaching/streams/{mid}/cancel", headers=user.headers)
        assert c.status_code == 202, c.text
        assert c.json()["local"] is False
        await asyncio.wait_for(reader, 15)
    assert events[-1].event == "done"
    # Asked on the second instance, cancelled by the first: a remote cancel.
    assert events[-1].data["finish_reason"] == "cancelled"
    assert events[-1].data["cancel_reason"] == "remote"
    conn = await asyncpg.connect(gemini_server.settings.database_url)
    row = await conn.fetchrow(
        "SELECT content, status, cancel_reason FROM messages WHERE id = $1", uuid.UUID(mid)
    )
    await conn.close()
    assert row["status"] == "interrupted" and row["cancel_reason"] == "remote"
    assert row["content"] == text_of(events)
    assert len(row["content"]) < 300 * 7


async def test_a_finished_answer_replays_on_the_other_instance(
    gemini_server: RunningServer, gclient: httpx.AsyncClient, second_instance: ServerProcess
) -> None:
    user = await make_user(gclient)
    async with gclient.stream(
        "POST", STREAM, json={"question": "완료 후 재생"}, headers=user.headers
    ) as r:
        events = await read_sse(r)
    mid = events[0].data["message_id"]
    # The same events, ids and all, from the log (asked sooner, the stored row replays).
    await _logged_end(gemini_server.settings, mid)
    async with httpx.AsyncClient(base_url=second_instance.url, timeout=30) as other:
        async with other.stream(
            "GET", f"/api/v1/coaching/streams/{mid}", headers=user.headers
        ) as r:
            replay = await read_sse(r)
    assert [(e.id, e.event) for e in replay] == [(e.id, e.event) for e in events]
    assert text_of(replay) == text_of(events)


async def _logged_end(settings: Settings, message_id: str) -> None:
    """Wait for the batched writer (every 25 ms) to put the terminal event in the
    event log: a reader who asks before then is given the stored row instead."""
    redis = aioredis.from_url(settings.redis_url)
    key = f"{settings.redis_prefix}ev:{message_id}"
    try:
        for _ in range(250):
            last = await redis.xrevrange(key, count=1)
            if last and last[0][1][b"e"] in (b"done", b"error"):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the terminal event never reached the event log")
    finally:
        await redis.aclose()


async def _expire_buffer(settings: Settings, message_id: str) -> None:
    """Let Redis expire the stream's event log, as STREAM_BUFFER_TTL does, once the
    batched writer has put the terminal event in it (it would recreate the key)."""
    await _logged_end(settings, message_id)
    redis = aioredis.from_url(settings.redis_url)
    key = f"{settings.redis_prefix}ev:{message_id}"
    try:
        await redis.pexpire(key, 1)
        for _ in range(250):
            if not await redis.exists(key):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the event log did not expire")
    finally:
        await redis.aclose()


async def test_an_answer_replays_from_its_stored_row_once_its_buffer_expired(
    gemini_server: RunningServer, gclient: httpx.AsyncClient, second_instance: ServerProcess
) -> None:
    user = await make_user(gclient)
    async with gclient.stream(
        "POST", STREAM, json={"question": "버퍼가 만료된 뒤의 재생"}, headers=user.headers
    ) as r:
        live = await read_sse(r)
    mid = live[0].data["message_id"]
    await _expire_buffer(gemini_server.settings, mid)
    url = f"/api/v1/coaching/streams/{mid}"
    async with httpx.AsyncClient(base_url=second_instance.url, timeout=30) as other:
        async with other.stream("GET", url, headers=user.headers) as r:
            replay = await read_sse(r)
        async with other.stream("GET", url, headers={**user.headers, "Last-Event-ID": "4"}) as r:
            after = await read_sse(r)
    # The whole stored text in one delta, under `replay: true`, ending as it ended live.
    assert [(e.id, e.event) for e in replay] == [(1, "meta"), (2, "delta"), (3, "done")]
    assert replay[0].data["replay"] is True and replay[0].data["message_id"] == mid
    assert replay[0].data["sources"] == live[0].data["sources"]
    assert replay[1].data["text"] == text_of(live) != ""
    for field in ("finish_reason", "status", "provider"):
        assert replay[2].data[field] == live[-1].data[field], field
    # A client that had part of it gets the whole text again under ids after its own.
    assert [e.id for e in after] == [5, 6, 7]
    assert text_of(after) == text_of(live)


async def test_a_cancelled_answer_replayed_from_its_row_keeps_its_cancel_reason(
    gemini_server: RunningServer, gclient: httpx.AsyncClient, second_instance: ServerProcess
) -> None:
    user = await make_user(gclient)
    q = "취소 후 재생 [[emulator:chunks=200,chunk_interval_ms=30]]"
    async with gclient.stream("POST", STREAM, json={"question": q}, headers=user.headers) as r:
        events: list = []
        reader = asyncio.create_task(read_sse(r, on_event=events))
        await until(lambda: len(events) >= 3, what="three events", task=reader)
        mid = events[0].data["message_id"]
        c = await gclient.post(f"/api/v1/coaching/streams/{mid}/cancel", headers=user.headers)
        assert c.status_code == 202 and c.json()["local"] is True
        await asyncio.wait_for(reader, 15)
    assert events[-1].data["cancel_reason"] == "user"
    await _expire_buffer(gemini_server.settings, mid)
    async with httpx.AsyncClient(base_url=second_instance.url, timeout=30) as other:
        async with other.stream(
            "GET", f"/api/v1/coaching/streams/{mid}", headers=user.headers
        ) as r:
            replay = await read_sse(r)
    assert replay[0].data["replay"] is True
    assert text_of(replay) == text_of(events)
    assert replay[-1].event == "done"
    assert replay[-1].data["status"] == "interrupted"
    assert replay[-1].data["finish_reason"] == "cancelled"
    assert replay[-1].data["cancel_reason"] == "user"
