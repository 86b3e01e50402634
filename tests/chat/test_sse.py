from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from tests.conftest import (
    RunningServer,
    User,
    emulator_stats,
    make_user,
    read_sse,
    text_of,
)

STREAM = "/api/v1/coaching/query/stream"


async def _stored(server: RunningServer, message_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(server.settings.database_url)
    try:
        for _ in range(100):
            row = await conn.fetchrow("SELECT * FROM messages WHERE id = $1", uuid.UUID(message_id))
            if row is not None and row["status"] != "streaming":
                return row
            await asyncio.sleep(0.05)
        assert row is not None
        return row
    finally:
        await conn.close()


async def test_offline_stream_events_are_ordered_and_match_the_stored_message(
    client: httpx.AsyncClient, server: RunningServer, alice: User
) -> None:
    async with client.stream(
        "POST",
        STREAM,
        json={"question": "팀원에게 피드백을 어떻게 주면 좋을까요?"},
        headers=alice.headers,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-accel-buffering"] == "no"
        events = await read_sse(r)
    assert events[0].event == "meta"
    assert events[-1].event == "done"
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    meta, done = events[0].data, events[-1].data
    assert done["message_id"] == meta["message_id"]
    assert done["finish_reason"] == "stop"
    assert done["provider"] == "offline"
    assert done["usage"]["completion_tokens"] > 0
    text = text_of(events)
    assert text.startswith("[오프라인 코치]")
    assert len([e for e in events if e.event == "delta"]) > 3
    row = await _stored(server, meta["message_id"])
    assert row["content"] == text
    assert row["status"] == "complete"
    assert row["provider"] == "offline"
    assert row["completion_tokens"] == done["usage"]["completion_tokens"]


async def test_gemini_stream_keeps_korean_intact_across_chunk_boundaries(
    gclient: httpx.AsyncClient, gemini_server: RunningServer, emulator: str
) -> None:
    user = await make_user(gclient)
    question = "회의에서 아무도 말을 안 해요. 어떻게 분위기를 바꾸죠?"
    async with gclient.stream(
        "POST", STREAM, json={"question": question}, headers=user.headers
    ) as r:
        events = await read_sse(r)
    deltas = [e.data["text"] for e in events if e.event == "delta"]
    text = "".join(deltas)
    assert events[-1].event == "done", events[-1]
    assert events[0].data["provider"] == "gemini"
    assert len(deltas) >= 3
    # Every chunk decodes on its own, and some cut a Korean word in the middle.
    assert any(
        d and "\uac00" <= d[-1] <= "\ud7a3" and "\uac00" <= n[:1] <= "\ud7a3"
        for d, n in zip(deltas, deltas[1:], strict=False)
    )
    assert "회의에서" in text
    row = await _stored(gemini_server, events[0].data["message_id"])
    assert row["content"] == text
    assert row["status"] == "complete"
    assert row["provider"] == "gemini"
    assert row["total_tokens"] and row["total_tokens"] > 0
    assert row["ttft_ms"] is not None


async def test_non_streaming_query_returns_the_same_turn(
    client: httpx.AsyncClient, server: RunningServer, alice: User
) -> None:
    r = await client.post(
        "/api/v1/coaching/query",
        json={"question": "위임은 어떻게 시작하나요?"},
        headers=alice.headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    row = await _stored(server, body["message_id"])
    assert body["answer"] == row["content"] and body["answer"]
    assert body["finish_reason"] == "stop"
    conv = await client.get(
        f"/api/v1/conversations/{body['conversation_id']}", headers=alice.headers
    )
    roles = [m["role"] for m in conv.json()["messages"]]
    assert roles == ["user", "assistant"]


async def test_second_turn_continues_the_conversation(
    client: httpx.AsyncClient, alice: User
) -> None:
    first = (
        await client.post(
            "/api/v1/coaching/query", json={"question": "첫 질문입니다"}, headers=alice.headers
        )
    ).json()
    second = await client.post(
        "/api/v1/coaching/query",
        json={"question": "두 번째 질문", "conversation_id": first["conversation_id"]},
        headers=alice.headers,
    )
    assert second.json()["conversation_id"] == first["conversation_id"]
    conv = await client.get(
        f"/api/v1/conversations/{first['conversation_id']}", headers=alice.headers
    )
    assert [m["content"] for m in conv.json()["messages"] if m["role"] == "user"] == [
        "첫 질문입니다",
        "두 번째 질문",
    ]


async def test_duplicate_client_message_id_makes_one_turn_and_one_llm_call(
    gclient: httpx.AsyncClient, emulator: str
) -> None:
    user = await make_user(gclient)
    conv = (await gclient.post("/api/v1/conversations", json={}, headers=user.headers)).json()
    body = {
        "question": "중복 전송 테스트 질문",
        "conversation_id": conv["id"],
        "client_message_id": "c-1",
    }
    before = await emulator_stats(emulator)

    async def send() -> list:
        async with gclient.stream("POST", STREAM, json=body, headers=user.headers) as r:
            assert r.status_code == 200
            return await read_sse(r)

    results = await asyncio.gather(send(), send(), send())
    after = await emulator_stats(emulator)
    ids = {events[0].data["message_id"] for events in results}
    assert len(ids) == 1
    texts = {text_of(events) for events in results}
    assert len(texts) == 1 and texts.pop()
    calls = lambda s: s["requests"].get("streamGenerateContent", 0)  # noqa: E731
    assert calls(after) - calls(before) == 1
    got = await gclient.get(f"/api/v1/conversations/{conv['id']}", headers=user.headers)
    assert [m["role"] for m in got.json()["messages"]] == ["user", "assistant"]


async def test_provider_failure_before_first_chunk_ends_with_error_event(
    gclient: httpx.AsyncClient, gemini_server: RunningServer
) -> None:
    user = await make_user(gclient)
    q = "실패 테스트 [[emulator:fault=before_first,fault_status=400]]"
    async with gclient.stream("POST", STREAM, json={"question": q}, headers=user.headers) as r:
        events = await read_sse(r)
    assert [e.event for e in events] == ["meta", "error"]
    assert events[-1].data["code"] == "llm_error"
    row = await _stored(gemini_server, events[0].data["message_id"])
    assert row["status"] == "error" and row["content"] == ""


async def test_provider_failure_mid_stream_keeps_the_partial_answer(
    gclient: httpx.AsyncClient, gemini_server: RunningServer
) -> None:
    user = await make_user(gclient)
    q = "중간 실패 [[emulator:fault=mid_stream,fault_after_chunks=4]]"
    async with gclient.stream("POST", STREAM, json={"question": q}, headers=user.headers) as r:
        events = await read_sse(r)
    assert events[-1].event == "error"
    assert events[-1].data["partial"] is True
    partial = text_of(events)
    assert partial
    row = await _stored(gemini_server, events[0].data["message_id"])
    assert row["status"] == "error"
    assert row["content"] == partial


async def test_stalled_provider_times_out_with_an_error(
    gclient: httpx.AsyncClient, gemini_server: RunningServer
) -> None:
    user = await make_user(gclient)
    q = "멈춤 [[emulator:fault=stall,fault_after_chunks=2]]"
    async with gclient.stream("POST", STREAM, json={"question": q}, headers=user.headers) as r:
        events = await read_sse(r)
    assert events[-1].event == "error"
    row = await _stored(gemini_server, events[0].data["message_id"])
    assert row["status"] == "error" and row["content"] == text_of(events)


async def test_empty_and_oversize_questions_are_rejected(
    client: httpx.AsyncClient, alice: User
) -> None:
    r = await client.post(STREAM, json={"question": "   "}, headers=alice.headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "question"
    r = await client.post(STREAM, json={"question": "가" * 2001}, headers=alice.headers)
    assert r.status_code == 422
    assert "2000" in r.json()["error"]["message"]
    r = await client.post(STREAM, json={}, headers=alice.headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "question"


async def test_other_users_conversation_and_message_ids_are_refused(
    client: httpx.AsyncClient, alice: User, bob: User
) -> None:
    turn = (
        await client.post(
            "/api/v1/coaching/query", json={"question": "내 대화"}, headers=alice.headers
        )
    ).json()
    r = await client.post(
        STREAM,
        json={"question": "남의 대화에 끼어들기", "conversation_id": turn["conversation_id"]},
        headers=bob.headers,
    )
    assert r.status_code == 404
    r = await client.get(f"/api/v1/coaching/streams/{turn['message_id']}", headers=bob.headers)
    assert r.status_code == 404
    r = await client.post(
        f"/api/v1/coaching/streams/{turn['message_id']}/cancel", headers=bob.headers
    )
    assert r.status_code == 404
    r = await client.post(
        STREAM, json={"question": "x", "report_id": str(uuid.uuid4())}, headers=bob.headers
    )
    assert r.status_code == 404


async def test_finished_message_replays_and_resumes_after_an_event_id(
    client: httpx.AsyncClient, alice: User
) -> None:
    async with client.stream(
        "POST", STREAM, json={"question": "재생 테스트"}, headers=alice.headers
    ) as r:
        events = await read_sse(r)
    mid = events[0].data["message_id"]
    async with client.stream("GET", f"/api/v1/coaching/streams/{mid}", headers=alice.headers) as r:
        replay = await read_sse(r)
    assert text_of(replay) == text_of(events)
    async with client.stream(
        "GET", f"/api/v1/coaching/streams/{mid}", headers={**alice.headers, "Last-Event-ID": "3"}
    ) as r:
        tail = await read_sse(r)
    assert [e.id for e in tail] == [e.id for e in events if e.id > 3]
    assert text_of(events[:3]) + text_of(tail) == text_of(events)
    r = await client.get(
        f"/api/v1/coaching/streams/{mid}", headers={**alice.headers, "Last-Event-ID": "x"}
    )
    assert r.status_code == 400


async def test_legacy_chat_shim_answers_with_history(
    client: httpx.AsyncClient, alice: User
) -> None:
    r = await client.post(
        "/chat",
        json={
            "question": "그럼 다음 1:1에서는 뭘 물어볼까요?",
            "conversationHistory": [
                {"role": "user", "content": "팀원이 요즘 말이 없어요"},
                {"role": "assistant", "content": "1:1로 먼저 이야기를 들어 보세요."},
            ],
        },
        headers=alice.headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["answer"].startswith("[오프라인 코치]")
    pre = await client.options(
        "/chat",
        headers={
            "Origin": "https://parent.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type, Authorization",
        },
    )
    assert pre.status_code == 200
    r = await client.post("/chat", json={"question": "hi"})
    assert r.status_code == 401
