from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.conftest import (
    RunningServer,
    client_of,
    gemini_settings,
    make_user,
    read_sse,
    serving,
    until,
)

STREAM = "/api/v1/coaching/query/stream"


@pytest.fixture(scope="module")
async def limited(settings, emulator) -> AsyncIterator[RunningServer]:  # type: ignore[no-untyped-def]
    async with serving(
        gemini_settings(settings, emulator).with_overrides(
            rate_turns_per_min=6.0, max_streams_per_user=2, rate_auth_failures_per_min=60.0
        )
    ) as running:
        yield running


@pytest.fixture
async def lclient(limited: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(limited) as c:
        yield c


async def test_turn_rate_limit_answers_429_with_retry_after(lclient: httpx.AsyncClient) -> None:
    user = await make_user(lclient)
    statuses = []
    for i in range(12):
        r = await lclient.post(
            "/api/v1/coaching/query", json={"question": f"질문 {i}"}, headers=user.headers
        )
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "rate_limited"
            assert r.json()["error"]["retry_after"] > 0
            break
    assert statuses[:10] == [200] * 10
    assert statuses[-1] == 429
    # Another user is not affected.
    other = await make_user(lclient)
    r = await lclient.post(
        "/api/v1/coaching/query", json={"question": "다른 사람"}, headers=other.headers
    )
    assert r.status_code == 200


async def test_concurrent_stream_cap_per_user_is_released_on_every_exit(
    lclient: httpx.AsyncClient,
) -> None:
    user = await make_user(lclient)
    long_q = "길게 [[emulator:chunks=150,chunk_interval_ms=30]]"

    async def open_stream(q: str) -> tuple[httpx.Response, list, asyncio.Task]:  # type: ignore[type-arg]
        req = lclient.build_request("POST", STREAM, json={"question": q}, headers=user.headers)
        resp = await lclient.send(req, stream=True)
        events: list = []
        task = (
            asyncio.create_task(read_sse(resp, on_event=events))
            if resp.status_code == 200
            else None
        )
        return resp, events, task  # type: ignore[return-value]

    a, a_events, a_task = await open_stream(long_q)
    b, b_events, b_task = await open_stream(long_q)
    assert a.status_code == 200 and b.status_code == 200
    c = await lclient.post(STREAM, json={"question": long_q}, headers=user.headers)
    assert c.status_code == 429
    assert c.json()["error"]["code"] == "too_many_streams"
    # Cancelling one frees its slot.
    await until(lambda: bool(a_events), what="the first stream's meta", task=a_task)
    mid = a_events[0].data["message_id"]
    r = await lclient.post(f"/api/v1/coaching/streams/{mid}/cancel", headers=user.headers)
    assert r.status_code in (200, 202)
    await asyncio.wait_for(a_task, 10)
    await a.aclose()
    d = await lclient.post(
        "/api/v1/coaching/query", json={"question": "이제 되나요"}, headers=user.headers
    )
    assert d.status_code == 200
    # A provider failure frees its slot too.
    e = await lclient.post(
        "/api/v1/coaching/query",
        json={"question": "실패 [[emulator:fault=before_first,fault_status=400]]"},
        headers=user.headers,
    )
    assert e.status_code == 502
    f = await lclient.post(
        "/api/v1/coaching/query", json={"question": "또 되나요"}, headers=user.headers
    )
    assert f.status_code == 200
    await asyncio.wait_for(b_task, 30)
    await b.aclose()


async def test_ws_turn_limit_sends_an_error_frame_and_keeps_the_socket(
    limited: RunningServer, lclient: httpx.AsyncClient
) -> None:
    user = await make_user(lclient)
    url = limited.url.replace("http://", "ws://") + "/api/v1/coaching/ws"
    codes = []
    async with connect(url, subprotocols=["bearer", user.token]) as ws:  # type: ignore[list-item]
        json.loads(await ws.recv())
        for i in range(11):
            await ws.send(json.dumps({"type": "question", "question": f"q{i}"}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["type"] in ("done", "error"):
                    codes.append(frame.get("code", "ok"))
                    break
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong"
    assert codes[:10] == ["ok"] * 10
    assert codes[10] == "rate_limited"


async def test_failed_auth_attempts_are_limited_per_address(lclient: httpx.AsyncClient) -> None:
    statuses = [
        (
            await lclient.get("/api/v1/conversations", headers={"Authorization": "Bearer x.y.z"})
        ).status_code
        for _ in range(14)
    ]
    assert statuses[0] == 401
    assert 429 in statuses
