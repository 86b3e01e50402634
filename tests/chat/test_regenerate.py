"""`POST /api/v1/messages/{id}/regenerate` and the WebSocket `regenerate` frame: a new
version of an answer, streamed like a turn; the old one kept; the model's history and
the conversation read the newest version, in the place of the first."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from linkcoach_stream.llm.base import ChatPrompt, StreamResult, Usage
from tests.conftest import (
    SSE,
    RunningServer,
    User,
    client_of,
    emulator_stats,
    gemini_settings,
    make_user,
    read_sse,
    serving,
    state_in,
    text_of,
    until,
)

QUERY = "/api/v1/coaching/query"
STREAM = "/api/v1/coaching/query/stream"


def regen_url(message_id: str) -> str:
    return f"/api/v1/messages/{message_id}/regenerate"


async def ask(
    client: httpx.AsyncClient, user: User, question: str, conversation_id: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"question": question}
    if conversation_id:
        body["conversation_id"] = conversation_id
    r = await client.post(QUERY, json=body, headers=user.headers)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def regenerate(
    client: httpx.AsyncClient, user: User, message_id: str, **body: Any
) -> list[SSE]:
    async with client.stream(
        "POST", regen_url(message_id), json=body or None, headers=user.headers
    ) as r:
        assert r.status_code == 200, (await r.aread()).decode()
        assert r.headers["content-type"].startswith("text/event-stream")
        return await read_sse(r)


async def shown(client: httpx.AsyncClient, user: User, conversation_id: str) -> list[dict]:
    r = await client.get(f"/api/v1/conversations/{conversation_id}", headers=user.headers)
    assert r.status_code == 200, r.text
    messages: list[dict] = r.json()["messages"]
    return messages


def regenerations(metrics_text: str) -> float:
    match = re.search(r"^linkcoach_regenerations_total (\S+)$", metrics_text, re.M)
    return float(match[1]) if match else 0.0


# -- a provider that numbers its answers and keeps every prompt ------------------------


class Recording:
    """Stands in for the LLM only: answers "답변 N" and keeps each prompt it was sent."""

    name = "recording"
    model = "recording-1"

    def __init__(self) -> None:
        self.prompts: list[ChatPrompt] = []

    async def stream(self, prompt: ChatPrompt, result: StreamResult) -> AsyncIterator[str]:
        self.prompts.append(prompt)
        n = len(self.prompts)
        for part in (f"답변 {n}", " 입니다"):
            await asyncio.sleep(0.01)
            yield part
        result.usage = Usage(10, 3, 13)
        result.finish_reason = "stop"

    async def generate_json(self, **_: Any) -> tuple[str, Usage]:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


@pytest.fixture(scope="module")
async def recorded(settings) -> AsyncIterator[tuple[RunningServer, Recording]]:  # type: ignore[no-untyped-def]
    async with serving(settings) as running:
        recording = Recording()
        # The app's own ChatService, with only its provider swapped.
        state_in(running).chat.provider = recording
        yield running, recording


@pytest.fixture
async def rclient(recorded: tuple[RunningServer, Recording]) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(recorded[0]) as c:
        yield c


def history_of(prompt: ChatPrompt) -> list[tuple[str, str]]:
    return [(t.role, t.content) for t in prompt.history]


# -- the tests ---------------------------------------------------------------------------


async def test_regenerate_streams_a_new_version_and_keeps_the_old_one(
    client: httpx.AsyncClient, server: RunningServer, alice: User
) -> None:
    turn = await ask(client, alice, "회의에서 의견이 안 나와요")
    before = regenerations((await client.get("/metrics")).text)
    events = await regenerate(client, alice, turn["message_id"])
    assert regenerations((await client.get("/metrics")).text) == before + 1
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[0].event == "meta" and events[-1].event == "done"
    meta = events[0].data
    new_id = meta["message_id"]
    assert new_id != turn["message_id"]
    assert meta["conversation_id"] == turn["conversation_id"]
    assert meta["regenerated_from"] == turn["message_id"]
    assert meta["version"] == 2
    assert events[-1].data["message_id"] == new_id
    assert events[-1].data["usage"]["completion_tokens"] > 0
    assert text_of(events)

    messages = await shown(client, alice, turn["conversation_id"])
    assert [m["role"] for m in messages] == ["user", "assistant"]
    answer = messages[1]
    assert answer["id"] == new_id and answer["content"] == text_of(events)
    assert answer["status"] == "complete"
    assert answer["version"] == 2 and answer["version_count"] == 2
    assert answer["version_ids"] == [turn["message_id"], new_id]
    assert answer["reply_to"] == messages[0]["id"] == meta["reply_to"]

    # The earlier version is kept and still replays.
    async with client.stream(
        "GET", f"/api/v1/coaching/streams/{turn['message_id']}", headers=alice.headers
    ) as r:
        old = await read_sse(r)
    assert text_of(old) == turn["answer"]
    conn = await asyncpg.connect(server.settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, version, superseded FROM messages WHERE reply_to = $1 ORDER BY version",
            uuid.UUID(messages[0]["id"]),
        )
    finally:
        await conn.close()
    assert [(str(r["id"]), r["version"], r["superseded"]) for r in rows] == [
        (turn["message_id"], 1, True),
        (new_id, 2, False),
    ]


async def test_history_sent_to_the_model_uses_the_newest_version(
    rclient: httpx.AsyncClient, recorded: tuple[RunningServer, Recording]
) -> None:
    _, recording = recorded
    user = await make_user(rclient)
    first = await ask(rclient, user, "첫 질문")
    conv = first["conversation_id"]
    n = len(recording.prompts)
    assert first["answer"] == f"답변 {n} 입니다"

    events = await regenerate(rclient, user, first["message_id"])
    again = text_of(events)
    assert again == f"답변 {n + 1} 입니다" != first["answer"]
    # The regeneration asked the same question with what came before it (nothing).
    assert recording.prompts[-1].question == "첫 질문"
    assert history_of(recording.prompts[-1]) == []

    second = await ask(rclient, user, "두 번째 질문", conv)
    assert history_of(recording.prompts[-1]) == [("user", "첫 질문"), ("assistant", again)]

    # Regenerating the second answer sends the history before its question.
    events = await regenerate(rclient, user, second["message_id"])
    assert recording.prompts[-1].question == "두 번째 질문"
    assert history_of(recording.prompts[-1]) == [("user", "첫 질문"), ("assistant", again)]
    second_again = text_of(events)

    # Regenerating the first answer once more keeps it in its place for later turns.
    events = await regenerate(rclient, user, first["message_id"])
    third_version = text_of(events)
    assert events[0].data["version"] == 3
    await ask(rclient, user, "세 번째 질문", conv)
    assert history_of(recording.prompts[-1]) == [
        ("user", "첫 질문"),
        ("assistant", third_version),
        ("user", "두 번째 질문"),
        ("assistant", second_again),
    ]


async def test_the_conversation_shows_the_newest_version_in_place_and_pages_by_position(
    rclient: httpx.AsyncClient,
) -> None:
    user = await make_user(rclient)
    first = await ask(rclient, user, "하나")
    conv = first["conversation_id"]
    await ask(rclient, user, "둘", conv)
    events = await regenerate(rclient, user, first["message_id"])
    newest = events[0].data["message_id"]

    messages = await shown(rclient, user, conv)
    assert [(m["role"], m["content"]) for m in messages][:3] == [
        ("user", "하나"),
        ("assistant", text_of(events)),
        ("user", "둘"),
    ]
    assert len(messages) == 4
    assert messages[1]["id"] == newest and messages[1]["version_count"] == 2
    assert messages[3]["version"] == 1 and messages[3]["version_ids"] == [messages[3]["id"]]
    assert "version" not in messages[0] and "feedback" not in messages[0]

    paged: list[str] = []
    cursor = None
    while True:
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        r = await rclient.get(f"/api/v1/conversations/{conv}", params=params, headers=user.headers)
        body = r.json()
        paged += [m["id"] for m in body["messages"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert paged == [m["id"] for m in messages]


async def test_feedback_stays_with_the_version_it_was_given_to(
    client: httpx.AsyncClient, alice: User
) -> None:
    turn = await ask(client, alice, "피드백과 버전")
    r = await client.post(
        f"/api/v1/messages/{turn['message_id']}/feedback",
        json={"rating": "down"},
        headers=alice.headers,
    )
    assert r.status_code == 200
    events = await regenerate(client, alice, turn["message_id"])
    (answer,) = [m for m in await shown(client, alice, turn["conversation_id"]) if m["reply_to"]]
    assert answer["id"] == events[0].data["message_id"]
    assert answer["feedback"] is None


async def test_regenerate_with_the_same_client_message_id_makes_one_version_and_one_llm_call(
    gclient: httpx.AsyncClient, emulator: str
) -> None:
    user = await make_user(gclient)
    turn = await ask(gclient, user, "중복 재생성 질문")
    before = await emulator_stats(emulator)
    results = await asyncio.gather(
        *(regenerate(gclient, user, turn["message_id"], client_message_id="r-1") for _ in range(3))
    )
    after = await emulator_stats(emulator)
    ids = {events[0].data["message_id"] for events in results}
    assert len(ids) == 1
    assert len({text_of(events) for events in results}) == 1
    calls = lambda s: s["requests"].get("streamGenerateContent", 0)  # noqa: E731
    assert calls(after) - calls(before) == 1
    (answer,) = [m for m in await shown(gclient, user, turn["conversation_id"]) if m["reply_to"]]
    assert answer["id"] in ids and answer["version_count"] == 2
    # The same id on another answer of the conversation is refused, not replayed.
    other = await ask(gclient, user, "다른 질문", turn["conversation_id"])
    r = await gclient.post(
        regen_url(other["message_id"]), json={"client_message_id": "r-1"}, headers=user.headers
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "client_message_id_used"


async def test_regenerating_while_the_answer_still_streams_is_a_409(
    gclient: httpx.AsyncClient,
) -> None:
    user = await make_user(gclient)
    question = "느린 답변 [[emulator:chunks=60,chunk_interval_ms=30]]"
    async with gclient.stream(
        "POST", STREAM, json={"question": question}, headers=user.headers
    ) as s:
        events: list[SSE] = []
        reading = asyncio.create_task(read_sse(s, on_event=events))
        await until(lambda: bool(events), what="the meta event", task=reading)
        mid = events[0].data["message_id"]
        r = await gclient.post(regen_url(mid), headers=user.headers)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "answer_in_progress"
        assert r.json()["error"]["message_id"] == mid
        await asyncio.wait_for(reading, 20)
    assert events[-1].event == "done"
    # Two regenerations at once: one starts, the other finds it still streaming.
    statuses = await asyncio.gather(
        *(gclient.post(regen_url(mid), headers=user.headers) for _ in range(2))
    )
    assert sorted(r.status_code for r in statuses) == [200, 409]


async def test_a_regeneration_is_cancelled_and_resumed_like_a_turn(
    gclient: httpx.AsyncClient, gemini_server: RunningServer
) -> None:
    user = await make_user(gclient)
    # The emulator reads its markers from the question, so every answer to it is slow.
    question = "길게 답해 주세요 [[emulator:chunks=200,chunk_interval_ms=30]]"
    async with gclient.stream(
        "POST", STREAM, json={"question": question}, headers=user.headers
    ) as first_stream:
        first: list[SSE] = []
        reading = asyncio.create_task(read_sse(first_stream, on_event=first))
        await until(lambda: bool(first), what="the meta event", task=reading)
        turn = first[0].data
        c = await gclient.post(
            f"/api/v1/coaching/streams/{turn['message_id']}/cancel", headers=user.headers
        )
        assert c.status_code == 202
        await asyncio.wait_for(reading, 20)
    async with gclient.stream("POST", regen_url(turn["message_id"]), headers=user.headers) as r:
        events: list[SSE] = []
        reading = asyncio.create_task(read_sse(r, on_event=events))
        await until(
            lambda: len([e for e in events if e.event == "delta"]) >= 3,
            what="three deltas",
            task=reading,
        )
        new_id = events[0].data["message_id"]
        # A second reader resumes the same regeneration from an event id.
        async with gclient.stream(
            "GET",
            f"/api/v1/coaching/streams/{new_id}",
            headers={**user.headers, "Last-Event-ID": "2"},
        ) as resumed:
            c = await gclient.post(
                f"/api/v1/coaching/streams/{new_id}/cancel", headers=user.headers
            )
            assert c.status_code == 202
            tail = await read_sse(resumed)
        await asyncio.wait_for(reading, 20)
    assert events[-1].event == "done" and events[-1].data["status"] == "interrupted"
    assert tail[0].id == 3 and tail[-1].data["finish_reason"] == "cancelled"
    assert tail[-1].data["cancel_reason"] == "user"
    (answer,) = [m for m in await shown(gclient, user, turn["conversation_id"]) if m["reply_to"]]
    assert answer["id"] == new_id and answer["status"] == "interrupted"
    assert answer["content"] == text_of(events) and answer["version"] == 2


async def test_regenerate_refuses_other_users_questions_and_bad_bodies(
    client: httpx.AsyncClient, server: RunningServer, alice: User, bob: User
) -> None:
    turn = await ask(client, alice, "남이 못 건드리는 답변")
    r = await client.post(regen_url(turn["message_id"]), headers=bob.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    conn = await asyncpg.connect(server.settings.database_url)
    try:
        question_id = await conn.fetchval(
            "SELECT reply_to FROM messages WHERE id = $1", uuid.UUID(turn["message_id"])
        )
        replies = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE reply_to = $1", question_id
        )
    finally:
        await conn.close()
    assert replies == 1
    for ident in (str(question_id), str(uuid.uuid4()), "nope"):
        r = await client.post(regen_url(ident), headers=alice.headers)
        assert r.status_code == 404, ident
    for body, field in (
        ({"client_message_id": ""}, "client_message_id"),
        ({"client_message_id": "x" * 129}, "client_message_id"),
        ({"client_message_id": 7}, "client_message_id"),
        ({"question": "새 질문"}, "question"),
    ):
        r = await client.post(regen_url(turn["message_id"]), json=body, headers=alice.headers)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == field
    r = await client.post(
        regen_url(turn["message_id"]), content=b"{not json", headers=alice.headers
    )
    assert r.status_code == 400


async def test_ws_regenerate_frame_streams_the_new_version(
    server: RunningServer, client: httpx.AsyncClient, alice: User, bob: User
) -> None:
    url = server.url.replace("http://", "ws://") + "/api/v1/coaching/ws"
    turn = await ask(client, alice, "웹소켓 재생성")

    async def recv(ws) -> dict:  # type: ignore[no-untyped-def]
        frame: dict = json.loads(await asyncio.wait_for(ws.recv(), 10))
        return frame

    async with connect(url, subprotocols=["bearer", alice.token]) as ws:  # type: ignore[list-item]
        assert (await recv(ws))["type"] == "ready"
        await ws.send(json.dumps({"type": "regenerate", "message_id": turn["message_id"]}))
        frames = [await recv(ws)]
        while frames[-1]["type"] not in ("done", "error"):
            frames.append(await recv(ws))
        await ws.send(json.dumps({"type": "regenerate", "message_id": "x"}))
        bad = await recv(ws)
        await ws.send(
            json.dumps(
                {"type": "regenerate", "message_id": turn["message_id"], "client_message_id": ""}
            )
        )
        invalid = await recv(ws)
    assert frames[0]["type"] == "meta" and frames[-1]["type"] == "done"
    assert frames[0]["regenerated_from"] == turn["message_id"] and frames[0]["version"] == 2
    new_id = frames[0]["message_id"]
    assert all(f["message_id"] == new_id for f in frames)
    assert [f["id"] for f in frames] == list(range(1, len(frames) + 1))
    assert bad["type"] == "error" and bad["code"] == "bad_frame"
    assert invalid["code"] == "validation_error" and invalid["field"] == "client_message_id"
    (answer,) = [m for m in await shown(client, alice, turn["conversation_id"]) if m["reply_to"]]
    assert answer["id"] == new_id
    assert answer["content"] == "".join(f["text"] for f in frames if f["type"] == "delta")

    async with connect(url, subprotocols=["bearer", bob.token]) as ws:  # type: ignore[list-item]
        assert (await recv(ws))["type"] == "ready"
        await ws.send(json.dumps({"type": "regenerate", "message_id": new_id}))
        refused = await recv(ws)
    assert refused["type"] == "error" and refused["code"] == "not_found"


# -- limits ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def limited(settings, emulator) -> AsyncIterator[RunningServer]:  # type: ignore[no-untyped-def]
    async with serving(
        gemini_settings(settings, emulator).with_overrides(
            rate_turns_per_min=6.0, max_streams_per_user=1
        )
    ) as running:
        yield running


async def test_regenerations_count_against_the_stream_cap_and_the_turn_limit(
    limited: RunningServer,
) -> None:
    async with client_of(limited) as c:
        user = await make_user(c)
        turn = await ask(c, user, "짧은 답변")
        slow = "느린 다른 답변 [[emulator:chunks=150,chunk_interval_ms=30]]"
        async with c.stream(
            "POST",
            STREAM,
            json={"question": slow, "conversation_id": turn["conversation_id"]},
            headers=user.headers,
        ) as s:
            events: list[SSE] = []
            reading = asyncio.create_task(read_sse(s, on_event=events))
            await until(lambda: bool(events), what="the meta event", task=reading)
            r = await c.post(regen_url(turn["message_id"]), headers=user.headers)
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "too_many_streams"
            cancel = await c.post(
                f"/api/v1/coaching/streams/{events[0].data['message_id']}/cancel",
                headers=user.headers,
            )
            assert cancel.status_code in (200, 202)
            await asyncio.wait_for(reading, 20)
        # The slot is free again. Turns so far: 2 started and 1 refused, of a burst of 10
        # (refilling at one per 10 s). A regeneration's POST returns when its stream ends.
        statuses = []
        for _ in range(10):
            r = await c.post(regen_url(turn["message_id"]), headers=user.headers)
            statuses.append(r.status_code)
            if r.status_code != 200:
                assert r.json()["error"]["code"] == "rate_limited"
                assert int(r.headers["retry-after"]) >= 1
                break
        made = len(statuses) - 1
        assert made in (7, 8) and statuses == [200] * made + [429]
        messages = await shown(c, user, turn["conversation_id"])
        assert messages[1]["version_count"] == 1 + made
