"""Usage that adds up (per day, per user, whatever way a turn ends) and the daily token
budget, refused the same on every instance."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from linkcoach_stream.config import Settings
from tests.conftest import (
    RunningServer,
    User,
    make_user,
    read_sse,
    start_server,
    stop_server,
    until,
)

USAGE = "/api/v1/usage"
QUERY = "/api/v1/coaching/query"
STREAM = "/api/v1/coaching/query/stream"


def today(settings: Settings) -> str:
    return datetime.now(ZoneInfo(settings.usage_timezone)).date().isoformat()


async def message_rows(settings: Settings, user_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetch(
            "SELECT * FROM messages WHERE user_id = $1 AND role = 'assistant' ORDER BY seq",
            user_id,
        )
    finally:
        await conn.close()


async def test_usage_adds_up_turns_and_reports_per_day(
    client: httpx.AsyncClient, server: RunningServer, alice: User, bob: User
) -> None:
    for question in ("회의를 짧게 하는 법", "칭찬을 잘하는 법"):
        r = await client.post(QUERY, json={"question": question}, headers=alice.headers)
        assert r.status_code == 200, r.text
    r = await client.post(
        "/api/v1/coaching/interpretation",
        json={"leadership_type": "HLH"},
        headers=alice.headers,
    )
    assert r.status_code == 200, r.text

    r = await client.get(USAGE, headers=alice.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["timezone"] == "Asia/Seoul"
    assert len(body["days"]) == 30 and body["to"] == today(server.settings)
    day = body["days"][-1]
    rows = await message_rows(server.settings, alice.user_id)
    assert day["date"] == today(server.settings)
    assert day["turns"] == 2 and day["reports"] == 1 and day["estimated_turns"] == 0
    assert day["prompt_tokens"] == sum(m["prompt_tokens"] for m in rows) > 0
    assert day["completion_tokens"] == sum(m["completion_tokens"] for m in rows) > 0
    assert day["total_tokens"] == day["prompt_tokens"] + day["completion_tokens"]
    assert body["totals"]["turns"] == 2
    assert all(d["turns"] == 0 for d in body["days"][:-1])
    assert body["budget"]["daily_tokens"] is None
    assert body["budget"]["spent_today"] == day["total_tokens"]

    # Another user's usage is theirs alone.
    other = (await client.get(USAGE, headers=bob.headers)).json()
    assert other["totals"]["turns"] == 0 and other["totals"]["prompt_tokens"] == 0


async def test_usage_range_is_validated_and_needs_auth(
    client: httpx.AsyncClient, alice: User
) -> None:
    cases = [
        ({"from": "2026-13-01"}, "from"),
        ({"to": "어제"}, "to"),
        ({"from": "2026-02-02", "to": "2026-02-01"}, "from"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "from"),
        ({"to": "0001-01-05"}, "to"),
    ]
    for params, field in cases:
        r = await client.get(USAGE, params=params, headers=alice.headers)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"]["field"] == field
    r = await client.get(
        USAGE, params={"from": "2026-01-01", "to": "2026-01-07"}, headers=alice.headers
    )
    assert r.status_code == 200
    assert [d["date"] for d in r.json()["days"]] == [
        (date(2026, 1, 1) + timedelta(days=i)).isoformat() for i in range(7)
    ]
    assert (await client.get(USAGE)).status_code == 401


async def test_a_cancelled_turn_records_an_estimate_marked_as_such(
    gclient: httpx.AsyncClient, gemini_server: RunningServer
) -> None:
    user = await make_user(gclient, prefix="usage")
    question = "천천히 답해 주세요 [[emulator:chunk_interval_ms=300]]"
    async with gclient.stream(
        "POST", STREAM, json={"question": question}, headers=user.headers
    ) as r:
        events: list = []
        reading = asyncio.create_task(read_sse(r, on_event=events))
        await until(lambda: len(events) >= 3, what="three events", task=reading)
        message_id = events[0].data["message_id"]
        c = await gclient.post(
            f"/api/v1/coaching/streams/{message_id}/cancel", headers=user.headers
        )
        assert c.status_code == 202
        rest = await reading
    done = rest[-1]
    assert done.event == "done" and done.data["finish_reason"] == "cancelled"
    assert done.data["cancel_reason"] == "user"
    assert done.data["usage"]["estimated"] is True
    assert done.data["usage"]["completion_tokens"] > 0
    row = (await message_rows(gemini_server.settings, user.user_id))[0]
    assert row["status"] == "interrupted" and row["usage_estimated"] is True
    assert row["completion_tokens"] == done.data["usage"]["completion_tokens"]
    day = (await gclient.get(USAGE, headers=user.headers)).json()["days"][-1]
    assert day["turns"] == 1 and day["estimated_turns"] == 1
    assert day["completion_tokens"] == row["completion_tokens"]
    assert day["prompt_tokens"] == row["prompt_tokens"] > 0


async def test_a_failed_turn_before_any_chunk_records_nothing_billed(
    gclient: httpx.AsyncClient,
) -> None:
    user = await make_user(gclient, prefix="usage")
    question = "실패 [[emulator:fault=before_first,fault_status=400]]"
    r = await gclient.post(QUERY, json={"question": question}, headers=user.headers)
    assert r.status_code == 502
    day = (await gclient.get(USAGE, headers=user.headers)).json()["days"][-1]
    assert day["turns"] == 1 and day["estimated_turns"] == 1
    assert day["total_tokens"] == 0


@pytest.fixture
async def budget_servers(settings: Settings) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    budgeted = settings.with_overrides(user_daily_token_budget=50)
    first = await start_server(budgeted)
    second = await start_server(budgeted)
    try:
        yield first, second
    finally:
        await stop_server(first)
        await stop_server(second)


async def test_daily_budget_refuses_new_turns_on_every_instance(
    budget_servers: tuple[RunningServer, RunningServer],
) -> None:
    first, second = budget_servers
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=30) as a,
        httpx.AsyncClient(base_url=second.url, timeout=30) as b,
    ):
        user = await make_user(a, prefix="budget")
        # The offline answer alone is well over 50 tokens.
        r = await a.post(QUERY, json={"question": "첫 질문입니다"}, headers=user.headers)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["total_tokens"] > 50

        r = await b.post(QUERY, json={"question": "두 번째 질문"}, headers=user.headers)
        assert r.status_code == 429
        error = r.json()["error"]
        assert error["code"] == "budget_exceeded"
        assert error["budget"] == 50 and error["spent"] > 50
        resets = datetime.fromisoformat(error["resets_at"])
        assert resets.utcoffset() == timedelta(hours=9)
        assert (resets.hour, resets.minute) == (0, 0)
        wait = (resets - datetime.now(resets.tzinfo)).total_seconds()
        assert abs(int(r.headers["Retry-After"]) - wait) < 5

        async with b.stream(
            "POST", STREAM, json={"question": "세 번째"}, headers=user.headers
        ) as s:
            assert s.status_code == 429

        url = first.url.replace("http://", "ws://") + "/api/v1/coaching/ws"
        async with connect(url, subprotocols=["bearer", user.token]) as ws:  # type: ignore[list-item]
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "question", "question": "네 번째"}))
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert frame["type"] == "error" and frame["code"] == "budget_exceeded"

        usage = (await b.get(USAGE, headers=user.headers)).json()
        assert usage["budget"]["daily_tokens"] == 50
        assert usage["budget"]["remaining_today"] == 0
        assert usage["totals"]["turns"] == 1
        # Another user still has their whole budget.
        other = await make_user(b, prefix="budget")
        r = await b.post(QUERY, json={"question": "안녕하세요"}, headers=other.headers)
        assert r.status_code == 200
    rows = await message_rows(first.settings, user.user_id)
    assert len(rows) == 1
