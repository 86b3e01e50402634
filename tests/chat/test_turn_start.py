"""A new conversation's first turn sends the model's request while its rows are being
written, and emits and writes nothing until they are (`Generation.run`, `stored`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest

from tests.conftest import (
    RunningServer,
    gemini_settings,
    make_user,
    read_sse,
    start_server,
    state_in,
    stop_server,
)

STREAM = "/api/v1/coaching/query/stream"


@pytest.fixture
async def gserver(settings, emulator) -> AsyncIterator[RunningServer]:  # type: ignore[no-untyped-def]
    running = await start_server(gemini_settings(settings, emulator))
    try:
        yield running
    finally:
        await stop_server(running)


async def until_true(
    check: Callable[[], Awaitable[object]], what: str, timeout_s: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def asked(emulator: str, marker: str) -> bool:
    async with httpx.AsyncClient() as c:
        recent = (await c.get(f"{emulator}/_emulator/requests")).json()
    return any(marker in text for r in recent for text in r["texts"])


async def blocked_insert(db: asyncpg.Connection) -> int | None:
    """The backend of the server's INSERT of a conversation, waiting on our lock."""
    return await db.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND query LIKE '%INSERT INTO conversations%' AND pid <> pg_backend_pid()"
    )


async def test_the_models_request_goes_out_while_the_new_conversation_is_stored(
    settings,  # type: ignore[no-untyped-def]
    emulator: str,
    gserver: RunningServer,
) -> None:
    marker = f"표시-{uuid.uuid4().hex[:8]}"
    question = f"{marker} 팀원들이 회의에서 말을 안 해요 [[emulator:ttft_ms=5,chunks=4]]"
    hub = state_in(gserver).hub
    db = await asyncpg.connect(settings.database_url)
    try:
        async with httpx.AsyncClient(base_url=gserver.url, timeout=30) as client:
            user = await make_user(client)
            before = set(hub.jobs)
            lock = db.transaction()
            await lock.start()
            await db.execute("LOCK TABLE conversations IN SHARE ROW EXCLUSIVE MODE")

            async def turn() -> tuple[int, list]:
                async with client.stream(
                    "POST", STREAM, json={"question": question}, headers=user.headers
                ) as r:
                    return r.status_code, await read_sse(r)

            task = asyncio.create_task(turn())
            await until_true(lambda: asked(emulator, marker), "the model's request")
            await until_true(lambda: blocked_insert(db), "the INSERT to wait on the lock")
            # The model answers within a few ms; its chunks wait for the rows.
            await asyncio.sleep(0.3)
            jobs = [job for mid, job in hub.jobs.items() if mid not in before]
            assert len(jobs) == 1 and jobs[0].running
            assert jobs[0].events == [], "nothing is emitted before the rows are stored"
            assert not task.done()
            await lock.commit()
            status, events = await asyncio.wait_for(task, 10)
        assert status == 200
        kinds = [e.event for e in events]
        assert kinds[0] == "meta" and kinds[-1] == "done" and kinds.count("meta") == 1
        assert "delta" in kinds
        answer = "".join(e.data["text"] for e in events if e.event == "delta")
        message_id = uuid.UUID(events[0].data["message_id"])
        row = await db.fetchrow(
            "SELECT m.status, m.content, c.title FROM messages m "
            "JOIN conversations c ON c.id = m.conversation_id WHERE m.id = $1",
            message_id,
        )
        assert row["status"] == "complete" and row["content"] == answer and answer
        assert row["title"].startswith(marker)
    finally:
        await db.close()


async def test_a_turn_whose_rows_cannot_be_stored_fails_and_drops_the_models_request(
    settings,  # type: ignore[no-untyped-def]
    emulator: str,
    gserver: RunningServer,
) -> None:
    marker = f"표시-{uuid.uuid4().hex[:8]}"
    # A long wait for the first chunk: the request is still open when the INSERT fails.
    question = f"{marker} 회의가 너무 길어요 [[emulator:ttft_ms=20000]]"
    hub = state_in(gserver).hub
    db = await asyncpg.connect(settings.database_url)
    try:
        async with httpx.AsyncClient(base_url=gserver.url, timeout=30) as client:
            user = await make_user(client)
            async with httpx.AsyncClient() as em:
                streaming_before = (await em.get(f"{emulator}/_emulator/stats")).json()["streaming"]
            before = set(hub.jobs)
            async with db.transaction():
                await db.execute("LOCK TABLE conversations IN SHARE ROW EXCLUSIVE MODE")
                task = asyncio.create_task(
                    client.post(STREAM, json={"question": question}, headers=user.headers)
                )
                await until_true(lambda: asked(emulator, marker), "the model's request")
                await until_true(lambda: blocked_insert(db), "the INSERT to wait on the lock")
                pid = await blocked_insert(db)
                # The server's connection is lost in the middle of the INSERT.
                assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
                response = await asyncio.wait_for(task, 10)
            assert response.status_code == 500
            assert response.json()["error"]["code"] == "internal_error"
            jobs = [job for mid, job in hub.jobs.items() if mid not in before]
            assert len(jobs) == 1
            await until_true(lambda: _ended(jobs[0].task), "the job to end")
            assert jobs[0].events == [], "a turn that never began says nothing"

            async def request_dropped() -> bool:
                async with httpx.AsyncClient() as em:
                    stats = (await em.get(f"{emulator}/_emulator/stats")).json()
                return stats["streaming"] <= streaming_before

            await until_true(request_dropped, "the model's request to be closed")
            assert not await db.fetchval(
                "SELECT count(*) FROM conversations WHERE title LIKE $1", f"{marker}%"
            )
            # Nothing stayed held: the same user's next turn runs to its end.
            async with client.stream(
                "POST",
                STREAM,
                json={"question": "다음 질문 [[emulator:chunks=2]]"},
                headers=user.headers,
            ) as r:
                assert r.status_code == 200
                events = await read_sse(r)
            assert events[-1].event == "done"
    finally:
        await db.close()


async def _ended(task: asyncio.Task[None] | None) -> bool:
    return task is not None and task.done()
