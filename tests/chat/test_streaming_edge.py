"""The streaming edge (`api/streaming.py`): SSE and WebSocket count streams the same way
and refuse a bad turn with the same error; the SSE response (`api/sse.py`) pings, notices
a client that leaves and answers HEAD without a stream. (The shutdown farewell on both
transports is in `tests/reliability/test_faults.py`: it needs a server process to
signal.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

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
WS = "/api/v1/coaching/ws"
SLOW = "[[emulator:chunks=150,chunk_interval_ms=30]]"


def ws_url(server: RunningServer) -> str:
    return server.url.replace("http://", "ws://") + WS


async def recv(ws: Any) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return frame


async def gauges(client: httpx.AsyncClient) -> dict[str, float]:
    r = await client.get("/metrics")
    assert r.status_code == 200
    found = {"sse": 0.0, "ws": 0.0, "sockets": 0.0}
    for line in r.text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == 'linkcoach_active_streams{transport="sse"}':
            found["sse"] = float(value)
        elif name == 'linkcoach_active_streams{transport="ws"}':
            found["ws"] = float(value)
        elif name == "linkcoach_open_websockets":
            found["sockets"] = float(value)
    return found


async def test_active_streams_counts_sse_streams_and_websocket_turns_the_same_way(
    gemini_server: RunningServer, gclient: httpx.AsyncClient
) -> None:
    alice = await make_user(gclient, prefix="edge")
    bob = await make_user(gclient, prefix="edge")
    base = await gauges(gclient)
    seen: dict[str, float] = {}

    async def settles(**expected: float) -> None:
        """The gauges reach `base` + `expected` within 10 s (they move as streams end)."""
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            seen.update(await gauges(gclient))
            if all(seen[k] == base[k] + v for k, v in expected.items()):
                return
            assert asyncio.get_running_loop().time() < deadline, (expected, base, seen)
            await asyncio.sleep(0.05)

    events: list[Any] = []
    async with gclient.stream(
        "POST", STREAM, json={"question": f"하나 {SLOW}"}, headers=alice.headers
    ) as r:
        reader = asyncio.create_task(read_sse(r, on_event=events))
        await until(lambda: len(events) >= 2, what="two events", task=reader)
        # One SSE response streaming one turn: one stream.
        await settles(sse=1, ws=0)
        async with connect(ws_url(gemini_server), subprotocols=["bearer", bob.token]) as ws:  # type: ignore[list-item]
            await recv(ws)
            # A socket with no turn running is a socket, not a stream.
            await settles(sse=1, ws=0, sockets=1)
            for q in ("둘", "셋"):
                await ws.send(json.dumps({"type": "question", "question": f"{q} {SLOW}"}))
            metas: set[str] = set()
            while len(metas) < 2:
                frame = await recv(ws)
                if frame["type"] == "meta":
                    metas.add(frame["message_id"])
            # Two turns on one socket: two streams, as two SSE responses would be.
            await settles(sse=1, ws=2, sockets=1)
        # The socket closed: its turns' streams end (their generations go on).
        await settles(sse=1, ws=0, sockets=0)
        assert not reader.done()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    # The client left the SSE stream: it ends too.
    await settles(sse=0, ws=0, sockets=0)
    mid = events[0].data["message_id"]
    for user, message_id in [(alice, mid), *((bob, m) for m in metas)]:
        await gclient.post(f"/api/v1/coaching/streams/{message_id}/cancel", headers=user.headers)


BAD_TURNS = [
    ({}, "question"),
    ({"question": 5}, "question"),
    ({"question": "질문", "client_message_id": ""}, "client_message_id"),
    ({"question": "질문", "conversation_id": "not-a-uuid"}, "conversation_id"),
    ({"question": "질문", "surprise": True}, "surprise"),
]


@pytest.mark.parametrize(("body", "field"), BAD_TURNS)
async def test_a_bad_turn_reads_the_same_over_sse_and_websocket(
    server: RunningServer, client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    user = await make_user(client, prefix="edge")
    r = await client.post(STREAM, json=body, headers=user.headers)
    assert r.status_code == 422, r.text
    over_http = r.json()["error"]
    assert over_http["code"] == "validation_error" and over_http["field"] == field
    async with connect(ws_url(server), subprotocols=["bearer", user.token]) as ws:  # type: ignore[list-item]
        await recv(ws)
        await ws.send(json.dumps({"type": "question", **body}))
        frame = await recv(ws)
    assert frame.pop("type") == "error"
    assert frame == over_http


async def test_a_bad_regeneration_reads_the_same_over_sse_and_websocket(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    user = await make_user(client, prefix="edge")
    message_id = str(uuid.uuid4())
    body = {"client_message_id": "x" * 129}
    r = await client.post(
        f"/api/v1/messages/{message_id}/regenerate", json=body, headers=user.headers
    )
    assert r.status_code == 422, r.text
    over_http = r.json()["error"]
    assert over_http["field"] == "client_message_id"
    async with connect(ws_url(server), subprotocols=["bearer", user.token]) as ws:  # type: ignore[list-item]
        await recv(ws)
        await ws.send(json.dumps({"type": "regenerate", "message_id": message_id, **body}))
        frame = await recv(ws)
    assert frame.pop("type") == "error"
    assert frame == over_http


# -- the SSE response: what it keeps of sse-starlette's --------------------------------


@pytest.fixture(scope="module")
async def pinging_server(settings: Any, emulator: str) -> AsyncIterator[RunningServer]:
    async with serving(
        gemini_settings(settings, emulator).with_overrides(stream_ping_interval_s=0.3)
    ) as running:
        yield running


async def test_an_sse_stream_pings_while_it_waits_for_the_first_token(
    pinging_server: RunningServer,
) -> None:
    async with client_of(pinging_server) as c:
        user = await make_user(c, prefix="edge")
        q = "첫 토큰까지 기다림 [[emulator:ttft_ms=1500,chunks=3]]"
        lines: list[str] = []
        async with c.stream("POST", STREAM, json={"question": q}, headers=user.headers) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["cache-control"] == "no-store"
            assert r.headers["x-accel-buffering"] == "no"
            async for line in r.aiter_lines():
                lines.append(line)
                if line.startswith("event: done"):
                    break
    # 1.5 s to the first token, pings 0.3 s apart: several comments, no event ids.
    pings = [line for line in lines if line.startswith(":")]
    assert len(pings) >= 3, lines
    assert all(line == ": ping" for line in pings)


async def test_a_client_that_leaves_an_sse_stream_is_noticed_before_anything_is_sent(
    gemini_server: RunningServer, gclient: httpx.AsyncClient
) -> None:
    """Disconnect detection listens for `http.disconnect`; it does not wait for a send to
    fail: the stream ends within 1.5 s of its client leaving, while the next ping is 5 s
    away (`stream_ping_interval_s`) and the first token 2.5 s."""
    assert gemini_server.settings.stream_ping_interval_s >= 5
    user = await make_user(gclient, prefix="edge")
    base = (await gauges(gclient))["sse"]
    q = "떠나는 손님 [[emulator:ttft_ms=2500,chunks=3]]"
    async with httpx.AsyncClient(base_url=gemini_server.url, timeout=30) as leaving:
        async with leaving.stream("POST", STREAM, json={"question": q}, headers=user.headers) as r:
            events = await read_sse(r, stop_after=1)
            assert events[0].event == "meta"
            assert (await gauges(gclient))["sse"] == base + 1
    deadline = asyncio.get_running_loop().time() + 1.5
    while (await gauges(gclient))["sse"] != base:
        assert asyncio.get_running_loop().time() < deadline, "the stream outlived its client"
        await asyncio.sleep(0.05)
    # The answer goes on without its reader and is stored whole.
    mid = events[0].data["message_id"]
    async with gclient.stream("GET", f"/api/v1/coaching/streams/{mid}", headers=user.headers) as r:
        rest = await read_sse(r)
    assert rest[-1].event == "done" and rest[-1].data["status"] == "complete"


async def test_head_on_a_stream_route_answers_headers_and_no_stream(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    user = await make_user(client, prefix="edge")
    async with client.stream(
        "POST", STREAM, json={"question": "머리만"}, headers=user.headers
    ) as r:
        mid = (await read_sse(r))[0].data["message_id"]
    r = await client.head(f"/api/v1/coaching/streams/{mid}", headers=user.headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.content == b""
