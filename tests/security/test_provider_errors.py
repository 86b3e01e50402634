"""A provider's own error text (which can quote keys, prompts or internal addresses) stays
in the server's logs; clients get a stable code and a fixed message.

The Gemini emulator quotes a bad `[[emulator:...]]` marker back in its 400 error, so a
marker named like a secret makes a real provider error that carries one."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.conftest import RunningServer, make_user, read_sse

STREAM = "/api/v1/coaching/query/stream"
SECRET = "sk_live_51HxQ9" + uuid.uuid4().hex
LEAKY = f"이 질문은 실패합니다 [[emulator:{SECRET}=1]]"
OVERLOADED = "과부하 [[emulator:fault=before_first,fault_status=503]]"


async def sse_error(client: httpx.AsyncClient, headers: dict, question: str) -> tuple[dict, str]:
    async with client.stream("POST", STREAM, json={"question": question}, headers=headers) as r:
        assert r.status_code == 200
        events = await read_sse(r)
    assert [e.event for e in events] == ["meta", "error"]
    return events[-1].data, json.dumps([e.data for e in events], ensure_ascii=False)


async def test_provider_error_text_stays_in_the_logs_over_sse_and_query(
    gclient: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    user = await make_user(gclient)
    with caplog.at_level(logging.WARNING, logger="linkcoach_stream.services.chat"):
        leaked, everything = await sse_error(gclient, user.headers, LEAKY)
    assert SECRET not in everything
    assert leaked["code"] == "llm_error"
    assert any(SECRET in (r.exc_text or "") + r.getMessage() for r in caplog.records) or any(
        r.exc_info and SECRET in str(r.exc_info[1]) for r in caplog.records
    )

    # Another failure of the provider reads the same to the client.
    other, _ = await sse_error(gclient, user.headers, OVERLOADED)
    assert (other["code"], other["message"]) == (leaked["code"], leaked["message"])

    r = await gclient.post("/api/v1/coaching/query", json={"question": LEAKY}, headers=user.headers)
    assert r.status_code == 502
    assert SECRET not in r.text
    assert r.json()["error"] == {"code": leaked["code"], "message": leaked["message"]}

    # Reading the finished message back (resume) carries no provider text either.
    mid = r.json()["message_id"]
    async with gclient.stream(
        "GET", f"/api/v1/coaching/streams/{mid}", headers=user.headers
    ) as resumed:
        replay = await read_sse(resumed)
    assert replay[-1].event == "error" and replay[-1].data["code"] == "llm_error"
    assert SECRET not in json.dumps([e.data for e in replay])


async def test_provider_error_text_never_reaches_a_websocket_client(
    gemini_server: RunningServer, gclient: httpx.AsyncClient
) -> None:
    user = await make_user(gclient)
    url = gemini_server.url.replace("http://", "ws://") + "/api/v1/coaching/ws"
    async with connect(url, subprotocols=["bearer", user.token]) as ws:  # type: ignore[list-item]
        await ws.recv()
        await ws.send(json.dumps({"type": "question", "question": LEAKY}))
        raw: list[str] = []
        while True:
            raw.append(str(await asyncio.wait_for(ws.recv(), 10)))
            frame = json.loads(raw[-1])
            if frame["type"] in ("done", "error"):
                break
    assert frame["type"] == "error" and frame["code"] == "llm_error"
    assert not any(SECRET in r for r in raw)
