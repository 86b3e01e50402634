"""How a generation that is stopped says why: the total timeout (user, remote and
shutdown cancels are tested where they happen: test_ws, test_multi_instance,
reliability/test_faults)."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from tests.conftest import gemini_settings, make_user, read_sse, start_server, stop_server

STREAM = "/api/v1/coaching/query/stream"


async def test_an_answer_past_the_total_timeout_ends_llm_timeout_and_is_stored_as_such(
    settings,
    emulator,  # type: ignore[no-untyped-def]
) -> None:
    running = await start_server(
        gemini_settings(settings, emulator).with_overrides(llm_total_timeout_s=1.0)
    )
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            user = await make_user(client)
            q = "아주 긴 답변 [[emulator:chunks=200,chunk_interval_ms=30]]"
            async with client.stream(
                "POST", STREAM, json={"question": q}, headers=user.headers
            ) as r:
                events = await read_sse(r)
    finally:
        await stop_server(running)
    end = events[-1]
    assert end.event == "error" and end.data["code"] == "llm_timeout"
    assert end.data["partial"] is True
    assert any(e.event == "delta" for e in events)
    conn = await asyncpg.connect(settings.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT status, finish_reason, error_code, cancel_reason, content "
            "FROM messages WHERE id = $1",
            uuid.UUID(end.data["message_id"]),
        )
    finally:
        await conn.close()
    assert row["status"] == "error" and row["finish_reason"] == "timeout"
    assert row["error_code"] == "llm_timeout" and row["cancel_reason"] == "timeout"
    assert row["content"]
