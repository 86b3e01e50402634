"""An authenticated WebSocket is held to what each HTTP request is held to: `resume` and
`cancel` frames pay the per-user request limit, and a question from a user who no
longer exists closes the socket."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from linkcoach_stream.config import Settings
from linkcoach_stream.db.repositories import users
from tests.conftest import RunningServer, client_of, make_user, serving, start_server, stop_server

WS = "/api/v1/coaching/ws"
USER_PER_MIN = 60.0  # a burst of 10 requests, one more each second
FRAMES = 40


def ws_url(server: RunningServer) -> str:
    return server.url.replace("http://", "ws://") + WS


async def recv(ws: ClientConnection, *, timeout: float = 10) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def answered(ws: ClientConnection, question: str) -> list[dict]:
    await ws.send(json.dumps({"type": "question", "question": question}))
    frames = []
    while True:
        frames.append(await recv(ws))
        if frames[-1]["type"] in ("done", "error"):
            return frames


async def until_closed(ws: ClientConnection) -> tuple[list[dict], int | None]:
    frames: list[dict] = []
    try:
        while True:
            frames.append(await recv(ws))
    except ConnectionClosed as closed:
        return frames, closed.rcvd.code if closed.rcvd else None


@pytest.fixture(scope="module")
async def tight(settings: Settings) -> AsyncIterator[RunningServer]:
    async with serving(settings.with_overrides(rate_user_per_min=USER_PER_MIN)) as running:
        yield running


@pytest.fixture
async def tclient(tight: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(tight) as c:
        yield c


@pytest.mark.parametrize("kind", ["resume", "cancel"])
async def test_resume_and_cancel_frames_pay_the_user_limit_and_close_4429(
    tight: RunningServer, tclient: httpx.AsyncClient, kind: str
) -> None:
    user = await make_user(tclient)
    async with connect(ws_url(tight), subprotocols=["bearer", user.token]) as ws:  # type: ignore[list-item]
        assert (await recv(ws))["type"] == "ready"
        turn = await answered(ws, "한 번 답해 주세요")
        assert turn[-1]["type"] == "done"
        message_id = turn[0]["message_id"]
        frame = {"type": kind, "message_id": message_id, "last_event_id": 0}
        for _ in range(FRAMES):
            await ws.send(json.dumps(frame))
        frames, code = await until_closed(ws)
    assert code == 4429
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "rate_limited"
    # The connection took one request; the rest of the burst (plus what refilled
    # meanwhile) was answered, each resume with at most one replay of the turn.
    allowed = int(USER_PER_MIN / 6) + 2
    if kind == "cancel":
        assert 0 < sum(f["type"] == "cancel_ack" for f in frames) <= allowed
    assert len(frames) <= allowed * len(turn) + 1 < FRAMES * len(turn)


async def test_a_question_over_the_turn_limit_stays_an_error_frame(settings: Settings) -> None:
    running = await start_server(
        settings.with_overrides(rate_user_per_min=USER_PER_MIN, rate_turns_per_min=1.0)
    )
    try:
        async with httpx.AsyncClient(base_url=running.url) as c:
            user = await make_user(c)
        async with connect(ws_url(running), subprotocols=["bearer", user.token]) as ws:  # type: ignore[list-item]
            await recv(ws)
            codes = [(await answered(ws, f"질문 {i}"))[-1].get("code") for i in range(12)]
            await ws.send(json.dumps({"type": "ping"}))
            assert (await recv(ws))["type"] == "pong"
    finally:
        await stop_server(running)
    assert codes[:10] == [None] * 10 and codes[10:] == ["rate_limited"] * 2


@pytest.mark.parametrize("how", ["deleted", "deactivated"])
async def test_a_removed_users_open_socket_closes_4401_at_the_next_question(
    server: RunningServer, client: httpx.AsyncClient, how: str
) -> None:
    user = await make_user(client)
    async with connect(ws_url(server), subprotocols=["bearer", user.token]) as ws:  # type: ignore[list-item]
        assert (await recv(ws))["type"] == "ready"
        assert (await answered(ws, "아직 있나요"))[-1]["type"] == "done"
        conn = await asyncpg.connect(server.settings.database_url)
        try:
            if how == "deleted":
                assert await users.delete_user(conn, user_id=user.user_id)
            else:
                await conn.execute(
                    "UPDATE users SET deleted_at = now() WHERE id = $1", user.user_id
                )
        finally:
            await conn.close()
        await ws.send(json.dumps({"type": "question", "question": "이제는요"}))
        frames, code = await until_closed(ws)
    assert code == 4401
    assert [f["type"] for f in frames] == ["error"]
    assert frames[0]["code"] == "unknown_user"


async def test_a_question_from_a_live_user_still_works_after_a_ping(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    user = await make_user(client)
    async with connect(ws_url(server), subprotocols=["bearer", user.token]) as ws:  # type: ignore[list-item]
        await recv(ws)
        await ws.send(json.dumps({"type": "cancel", "message_id": str(uuid.uuid4())}))
        assert (await recv(ws))["code"] == "not_found"
        assert (await answered(ws, "두 번째 질문"))[-1]["type"] == "done"
