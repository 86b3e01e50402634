from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import ALLOWED_ORIGIN, RunningServer, User, make_user, read_sse, text_of

WS = "/api/v1/coaching/ws"


def ws_url(server: RunningServer) -> str:
    return server.url.replace("http://", "ws://") + WS


async def recv(ws, *, timeout: float = 10) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until_terminal(ws, message_id: str | None = None) -> list[dict]:  # type: ignore[no-untyped-def]
    frames = []
    while True:
        frame = await recv(ws)
        frames.append(frame)
        if frame["type"] in ("done", "error") and (
            message_id is None or frame.get("message_id") == message_id
        ):
            return frames


async def test_ws_subprotocol_auth_and_a_streamed_turn(server: RunningServer, alice: User) -> None:
    async with connect(ws_url(server), subprotocols=["bearer", alice.token]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "bearer"
        assert (await recv(ws))["type"] == "ready"
        await ws.send(json.dumps({"type": "question", "question": "웹소켓으로 묻습니다"}))
        frames = await until_terminal(ws)
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "meta" and kinds[-1] == "done" and "delta" in kinds
    assert [f["id"] for f in frames] == list(range(1, len(frames) + 1))
    assert "".join(f["text"] for f in frames if f["type"] == "delta").startswith("[오프라인 코치]")


async def test_ws_first_frame_auth_then_many_turns_and_ping(
    server: RunningServer, alice: User
) -> None:
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps({"type": "auth", "token": alice.token}))
        assert (await recv(ws))["type"] == "ready"
        await ws.send(json.dumps({"type": "ping", "t": 1}))
        assert await recv(ws) == {"type": "pong", "t": 1}
        await ws.send(json.dumps({"type": "question", "question": "첫 번째"}))
        first = await until_terminal(ws)
        conv = first[0]["conversation_id"]
        await ws.send(
            json.dumps({"type": "question", "question": "두 번째", "conversation_id": conv})
        )
        second = await until_terminal(ws)
    assert second[0]["conversation_id"] == conv
    assert second[-1]["type"] == "done"


@pytest.mark.parametrize("how", ["subprotocol", "first_frame", "no_frame_type"])
async def test_ws_bad_token_closes_with_4401(server: RunningServer, how: str) -> None:
    if how == "subprotocol":
        ws_ctx = connect(ws_url(server), subprotocols=["bearer", "not.a.token"])  # type: ignore[list-item]
    else:
        ws_ctx = connect(ws_url(server))
    async with ws_ctx as ws:
        if how == "first_frame":
            await ws.send(json.dumps({"type": "auth", "token": "bad"}))
        elif how == "no_frame_type":
            await ws.send(json.dumps({"hello": 1}))
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_ws_disallowed_origin_is_refused(server: RunningServer, alice: User) -> None:
    with pytest.raises(InvalidStatus):
        async with connect(
            ws_url(server),
            origin="https://evil.example",  # type: ignore[arg-type]
            subprotocols=["bearer", alice.token],
        ):  # type: ignore[list-item]
            pass
    async with connect(
        ws_url(server),
        origin=ALLOWED_ORIGIN,  # type: ignore[arg-type]
        subprotocols=["bearer", alice.token],
    ) as ws:  # type: ignore[list-item]
        assert (await recv(ws))["type"] == "ready"


async def test_ws_bad_frames_get_error_frames_and_the_socket_stays(
    server: RunningServer, alice: User, bob: User
) -> None:
    other = uuid.uuid4()
    async with connect(ws_url(server), subprotocols=["bearer", alice.token]) as ws:  # type: ignore[list-item]
        await recv(ws)
        cases = [
            ("not json", "bad_frame"),
            ("[1,2]", "bad_frame"),
            (json.dumps({"type": "launch"}), "bad_frame"),
            (json.dumps({"type": "question"}), "validation_error"),
            (json.dumps({"type": "question", "question": ""}), "validation_error"),
            (json.dumps({"type": "question", "question": "가" * 3000}), "validation_error"),
            (json.dumps({"type": "cancel", "message_id": "zz"}), "bad_frame"),
            (json.dumps({"type": "cancel", "message_id": str(other)}), "not_found"),
            (
                json.dumps({"type": "question", "question": "x", "conversation_id": str(other)}),
                "not_found",
            ),
            (
                json.dumps({"type": "resume", "message_id": str(other), "last_event_id": -1}),
                "bad_frame",
            ),
        ]
        for raw, code in cases:
            await ws.send(raw)
            frame = await recv(ws)
            assert frame["type"] == "error" and frame["code"] == code, (raw, frame)
        await ws.send(b"\x00\x01")
        assert (await recv(ws))["code"] == "bad_frame"
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "pong"


async def test_sse_and_ws_store_the_same_result(
    server: RunningServer, client: httpx.AsyncClient, alice: User
) -> None:
    question = "같은 질문을 두 경로로 보냅니다"
    async with client.stream(
        "POST", "/api/v1/coaching/query/stream", json={"question": question}, headers=alice.headers
    ) as r:
        sse = await read_sse(r)
    async with connect(ws_url(server), subprotocols=["bearer", alice.token]) as ws:  # type: ignore[list-item]
        await recv(ws)
        await ws.send(json.dumps({"type": "question", "question": question}))
        frames = await until_terminal(ws)
    ws_text = "".join(f["text"] for f in frames if f["type"] == "delta")
    assert ws_text == text_of(sse)
    conn = await asyncpg.connect(server.settings.database_url)
    rows = await conn.fetch(
        "SELECT content, status, provider FROM messages WHERE id = ANY($1::uuid[])",
        [uuid.UUID(sse[0].data["message_id"]), uuid.UUID(frames[0]["message_id"])],
    )
    await conn.close()
    assert len(rows) == 2
    assert {(r["content"], r["status"], r["provider"]) for r in rows} == {
        (ws_text, "complete", "offline")
    }


async def test_ws_cancel_stops_generation_and_keeps_partial(
    gemini_server: RunningServer, gclient: httpx.AsyncClient
) -> None:
    user = await make_user(gclient)
    async with connect(ws_url(gemini_server), subprotocols=["bearer", user.token]) as ws:  # type: ignore[list-item]
        await recv(ws)
        q = "길게 답해 주세요 [[emulator:chunks=200,chunk_interval_ms=30]]"
        await ws.send(json.dumps({"type": "question", "question": q}))
        meta = await recv(ws)
        mid = meta["message_id"]
        got = [await recv(ws) for _ in range(3)]
        assert all(f["type"] == "delta" for f in got)
        await ws.send(json.dumps({"type": "cancel", "message_id": mid}))
        frames = await until_terminal(ws, mid)
    done = frames[-1]
    assert done["type"] == "done" and done["finish_reason"] == "cancelled"
    assert done["cancel_reason"] == "user"
    assert any(f["type"] == "cancel_ack" for f in frames)
    text = "".join(f["text"] for f in got + frames if f["type"] == "delta")
    conn = await asyncpg.connect(gemini_server.settings.database_url)
    row = await conn.fetchrow("SELECT content, status FROM messages WHERE id = $1", uuid.UUID(mid))
    await conn.close()
    assert row["status"] == "interrupted"
    assert row["content"] == text
    assert 0 < len(text) < 200 * 7
