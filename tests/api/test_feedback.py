"""`POST /api/v1/messages/{id}/feedback`: one rating per user per answer, owner only,
finished answers only, shown on the message and counted in /metrics."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import RunningServer, User, make_user, read_sse

QUERY = "/api/v1/coaching/query"
STREAM = "/api/v1/coaching/query/stream"


def feedback_url(message_id: str) -> str:
    return f"/api/v1/messages/{message_id}/feedback"


async def answered(client: httpx.AsyncClient, user: User, question: str) -> dict[str, Any]:
    r = await client.post(QUERY, json={"question": question}, headers=user.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def shown_answer(client: httpx.AsyncClient, user: User, turn: dict[str, Any]) -> dict:
    r = await client.get(f"/api/v1/conversations/{turn['conversation_id']}", headers=user.headers)
    assert r.status_code == 200, r.text
    (answer,) = [m for m in r.json()["messages"] if m["role"] == "assistant"]
    return answer  # type: ignore[no-any-return]


async def wait_for_events(events: list, n: int) -> None:
    for _ in range(400):
        if len(events) >= n:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"fewer than {n} events: {events}")


def feedback_count(metrics_text: str, rating: str) -> float:
    match = re.search(
        rf'^linkcoach_answer_feedback_total\{{rating="{rating}"\}} (\S+)$', metrics_text, re.M
    )
    return float(match[1]) if match else 0.0


async def test_feedback_is_stored_shown_on_the_message_and_a_second_one_replaces_it(
    client: httpx.AsyncClient, server: RunningServer, alice: User
) -> None:
    turn = await answered(client, alice, "팀 회의가 너무 길어요")
    assert (await shown_answer(client, alice, turn))["feedback"] is None

    r = await client.post(
        feedback_url(turn["message_id"]),
        json={"rating": "up", "comment": "  바로 써먹을 수 있었어요  "},
        headers=alice.headers,
    )
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["message_id"] == turn["message_id"]
    assert first["rating"] == "up" and first["comment"] == "바로 써먹을 수 있었어요"
    shown = (await shown_answer(client, alice, turn))["feedback"]
    assert shown["rating"] == "up" and shown["comment"] == "바로 써먹을 수 있었어요"

    r = await client.post(
        feedback_url(turn["message_id"]), json={"rating": "down"}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["rating"] == "down" and second["comment"] is None
    assert second["created_at"] == first["created_at"]
    assert second["updated_at"] > first["updated_at"]
    shown = (await shown_answer(client, alice, turn))["feedback"]
    assert shown["rating"] == "down" and shown["comment"] is None

    conn = await asyncpg.connect(server.settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT user_id, rating FROM message_feedback WHERE message_id = $1",
            uuid.UUID(turn["message_id"]),
        )
    finally:
        await conn.close()
    assert [(r["user_id"], r["rating"]) for r in rows] == [(alice.user_id, "down")]


async def test_feedback_is_counted_in_metrics_by_rating(
    client: httpx.AsyncClient, alice: User
) -> None:
    before = (await client.get("/metrics")).text
    a = await answered(client, alice, "첫 번째 답변")
    b = await answered(client, alice, "두 번째 답변")
    for turn, rating in ((a, "up"), (b, "down"), (b, "up")):
        r = await client.post(
            feedback_url(turn["message_id"]), json={"rating": rating}, headers=alice.headers
        )
        assert r.status_code == 200
    after = (await client.get("/metrics")).text
    assert feedback_count(after, "up") - feedback_count(before, "up") == 2
    assert feedback_count(after, "down") - feedback_count(before, "down") == 1


async def test_only_the_owner_can_rate_and_only_answers(
    client: httpx.AsyncClient, server: RunningServer, alice: User, bob: User
) -> None:
    turn = await answered(client, alice, "내 답변")
    r = await client.post(
        feedback_url(turn["message_id"]), json={"rating": "down"}, headers=bob.headers
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    conn = await asyncpg.connect(server.settings.database_url)
    try:
        question_id = await conn.fetchval(
            "SELECT reply_to FROM messages WHERE id = $1", uuid.UUID(turn["message_id"])
        )
        stored = await conn.fetchval(
            "SELECT count(*) FROM message_feedback WHERE message_id = $1",
            uuid.UUID(turn["message_id"]),
        )
    finally:
        await conn.close()
    assert stored == 0
    # A question is not an answer; an unknown or malformed id is nothing.
    for ident in (str(question_id), str(uuid.uuid4()), "not-a-uuid"):
        r = await client.post(feedback_url(ident), json={"rating": "up"}, headers=alice.headers)
        assert r.status_code == 404, ident
    r = await client.post(feedback_url(turn["message_id"]), json={"rating": "up"})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "rating"),
        ({"rating": "meh"}, "rating"),
        ({"rating": 1}, "rating"),
        ({"rating": "up", "comment": "가" * 1001}, "comment"),
        ({"rating": "up", "comment": "a\x00b"}, "comment"),
        ({"rating": "up", "comment": 5}, "comment"),
        ({"rating": "up", "stars": 5}, "stars"),
    ],
)
async def test_bad_feedback_is_422_naming_the_field(
    client: httpx.AsyncClient, alice: User, body: dict[str, Any], field: str
) -> None:
    turn = await answered(client, alice, "검증용 답변")
    r = await client.post(feedback_url(turn["message_id"]), json=body, headers=alice.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


async def test_a_comment_of_exactly_1000_characters_is_kept(
    client: httpx.AsyncClient, alice: User
) -> None:
    turn = await answered(client, alice, "긴 의견")
    comment = "좋" * 1000
    r = await client.post(
        feedback_url(turn["message_id"]),
        json={"rating": "up", "comment": comment},
        headers=alice.headers,
    )
    assert r.status_code == 200 and r.json()["comment"] == comment


async def test_a_streaming_answer_cannot_be_rated_until_it_finishes(
    gclient: httpx.AsyncClient,
) -> None:
    user = await make_user(gclient)
    question = "천천히 [[emulator:chunks=40,chunk_interval_ms=40]]"
    async with gclient.stream(
        "POST", STREAM, json={"question": question}, headers=user.headers
    ) as r:
        events: list = []
        reading = asyncio.create_task(read_sse(r, on_event=events))
        await wait_for_events(events, 2)
        mid = events[0].data["message_id"]
        early = await gclient.post(feedback_url(mid), json={"rating": "up"}, headers=user.headers)
        assert early.status_code == 409, early.text
        assert early.json()["error"]["code"] == "answer_not_finished"
        await asyncio.wait_for(reading, 20)
    assert events[-1].event == "done"
    late = await gclient.post(feedback_url(mid), json={"rating": "up"}, headers=user.headers)
    assert late.status_code == 200, late.text


async def test_a_failed_answer_cannot_be_rated_but_a_stopped_one_can(
    gclient: httpx.AsyncClient,
) -> None:
    user = await make_user(gclient)
    failed = await gclient.post(
        QUERY,
        json={"question": "실패 [[emulator:fault=before_first,fault_status=400]]"},
        headers=user.headers,
    )
    assert failed.status_code == 502
    r = await gclient.post(
        feedback_url(failed.json()["message_id"]), json={"rating": "down"}, headers=user.headers
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "answer_failed"

    question = "멈출 답변 [[emulator:chunks=200,chunk_interval_ms=30]]"
    async with gclient.stream(
        "POST", STREAM, json={"question": question}, headers=user.headers
    ) as s:
        events: list = []
        reading = asyncio.create_task(read_sse(s, on_event=events))
        await wait_for_events(events, 3)
        mid = events[0].data["message_id"]
        c = await gclient.post(f"/api/v1/coaching/streams/{mid}/cancel", headers=user.headers)
        assert c.status_code in (200, 202)
        await asyncio.wait_for(reading, 20)
    assert events[-1].data["status"] == "interrupted"
    for _ in range(50):
        r = await gclient.post(feedback_url(mid), json={"rating": "down"}, headers=user.headers)
        if r.status_code != 409:
            break
        await asyncio.sleep(0.05)
    assert r.status_code == 200, r.text


async def test_openapi_documents_feedback_and_regenerate(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    feedback = doc["paths"]["/api/v1/messages/{message_id}/feedback"]["post"]
    assert feedback["requestBody"]["required"] is True
    schema = doc["components"]["schemas"]["FeedbackRequest"]
    assert schema["properties"]["rating"]["enum"] == ["up", "down"]
    assert schema["required"] == ["rating"]
    regenerate = doc["paths"]["/api/v1/messages/{message_id}/regenerate"]["post"]
    assert regenerate["requestBody"]["required"] is False
    assert "text/event-stream" in regenerate["responses"]["200"]["content"]
    assert "409" in regenerate["responses"] and "409" in feedback["responses"]
