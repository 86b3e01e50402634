"""End to end: personal data in a question never reaches the model, Postgres, Redis or a
log line, over every way a question comes in (SSE, WebSocket, `/coaching/query`, `/chat`
with its history)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from linkcoach_stream.config import Settings
from linkcoach_stream.logging_setup import JsonFormatter
from tests.conftest import (
    RunningServer,
    gemini_settings,
    make_user,
    read_sse,
    serving,
    start_server,
    stop_server,
)

RAW = {
    "010-9876-5432": "[전화번호]",
    "leader.kim@example.com": "[이메일]",
    "850505-1234567": "[주민등록번호]",
    "4111 1111 1111 1111": "[카드번호]",
    "123456-12-654321": "[계좌번호]",
}
PII_TEXT = (
    "제 번호 010-9876-5432, 메일 leader.kim@example.com, 주민번호 850505-1234567, "
    "카드 4111 1111 1111 1111, 국민 123456-12-654321 입니다."
)


async def emulator_texts(emulator: str, tag: str) -> list[str]:
    async with httpx.AsyncClient() as c:
        recent = (await c.get(f"{emulator}/_emulator/requests")).json()
    return ["\n".join(r["texts"]) for r in recent if tag in "\n".join(r["texts"])]


def leaks(text: str) -> list[str]:
    return [raw for raw in RAW if raw in text]


@pytest.fixture
async def masked_server(settings: Settings, emulator: str) -> AsyncIterator[RunningServer]:
    async with serving(gemini_settings(settings, emulator)) as running:
        yield running


async def _redis_values(settings: Settings) -> str:
    client = aioredis.from_url(settings.redis_url or "")
    out: list[str] = []
    try:
        async for key in client.scan_iter(match=f"{settings.redis_prefix}*"):
            kind = (await client.type(key)).decode()
            if kind == "stream":
                for _, fields in await client.xrange(key):
                    out.extend(v.decode(errors="replace") for v in fields.values())
            elif kind == "string":
                value = await client.get(key)
                out.append(value.decode(errors="replace") if value else "")
    finally:
        await client.aclose()
    return "\n".join(out)


async def test_no_raw_personal_data_reaches_the_model_the_database_redis_or_logs(
    masked_server: RunningServer, emulator: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tag = f"태그{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=masked_server.url, timeout=30) as client:
        user = await make_user(client, prefix="pii")
        async with client.stream(
            "POST",
            "/api/v1/coaching/query/stream",
            json={"question": f"{tag} SSE {PII_TEXT}"},
            headers=user.headers,
        ) as r:
            assert r.status_code == 200
            events = await read_sse(r)
        assert events[-1].event == "done"
        conversation_id = events[0].data["conversation_id"]

        r = await client.post(
            "/api/v1/coaching/query",
            json={"question": f"{tag} query {PII_TEXT}", "conversation_id": conversation_id},
            headers=user.headers,
        )
        assert r.status_code == 200, r.text

        history = [
            {"role": "user", "content": f"{tag} 이전 질문 {PII_TEXT}"},
            {"role": "assistant", "content": "네, 말씀해 주세요."},
        ]
        r = await client.post(
            "/chat",
            json={"question": f"{tag} chat {PII_TEXT}", "conversationHistory": history},
            headers=user.headers,
        )
        assert r.status_code == 200, r.text

        url = masked_server.url.replace("http://", "ws://") + "/api/v1/coaching/ws"
        async with connect(url, subprotocols=["bearer", user.token]) as ws:  # type: ignore[list-item]
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "question", "question": f"{tag} ws {PII_TEXT}"}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["type"] in ("done", "error"):
                    break
            assert frame["type"] == "done", frame

    sent = await emulator_texts(emulator, tag)
    assert len(sent) == 4
    for text in sent:
        assert leaks(text) == [], text
        for placeholder in RAW.values():
            assert placeholder in text
    # The /chat history reached the model masked too.
    assert any("이전 질문 제 번호 [전화번호]" in text for text in sent)

    conn = await asyncpg.connect(masked_server.settings.database_url)
    try:
        await asyncio.sleep(0.3)  # let the API log writer flush
        rows = await conn.fetch("SELECT content FROM messages WHERE user_id = $1", user.user_id)
        titles = await conn.fetch(
            "SELECT title FROM conversations WHERE user_id = $1", user.user_id
        )
        logs = await conn.fetch("SELECT * FROM api_logs WHERE user_id = $1", user.user_id)
    finally:
        await conn.close()
    stored = "\n".join(r["content"] for r in rows) + "\n".join(t["title"] or "" for t in titles)
    assert len(rows) == 8
    assert leaks(stored) == []
    assert "[주민등록번호]" in stored
    assert logs and leaks("\n".join(str(dict(r)) for r in logs)) == []
    assert leaks(await _redis_values(masked_server.settings)) == []
    formatter = JsonFormatter()
    assert leaks("\n".join(formatter.format(r) for r in caplog.records)) == []


async def test_masking_can_be_switched_off(settings: Settings, emulator: str) -> None:
    running = await start_server(
        gemini_settings(settings, emulator).with_overrides(pii_masking=False)
    )
    tag = f"태그{uuid.uuid4().hex[:8]}"
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            user = await make_user(client, prefix="pii")
            r = await client.post(
                "/api/v1/coaching/query",
                json={"question": f"{tag} {PII_TEXT}"},
                headers=user.headers,
            )
            assert r.status_code == 200, r.text
    finally:
        await stop_server(running)
    sent = await emulator_texts(emulator, tag)
    assert len(sent) == 1 and leaks(sent[0]) == list(RAW)


async def test_report_inputs_are_masked_before_they_are_echoed(
    client: httpx.AsyncClient,
) -> None:
    user = await make_user(client, leadership_type=None, prefix="pii")
    r = await client.post(
        "/api/v1/coaching/interpretation",
        json={"assessment": {"공유": 4, "010-9876-5432": 3}},
        headers=user.headers,
    )
    assert r.status_code == 422
    assert "010-9876-5432" not in r.text
    assert "[전화번호]" in r.text
