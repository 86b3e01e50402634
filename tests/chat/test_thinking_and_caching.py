"""Thinking budget and implicit prefix caching, from the request Gemini is sent to the
usage recorded, and the emulator's side of both."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx

from linkcoach_stream.config import Settings
from linkcoach_stream.llm.prompts import PERSONA, system_instruction
from tests.conftest import (
    RunningServer,
    gemini_settings,
    make_user,
    start_server,
    stop_server,
)

QUERY = "/api/v1/coaching/query"


async def sent(emulator: str, tag: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as c:
        recent = (await c.get(f"{emulator}/_emulator/requests")).json()
    found = [r for r in recent if tag in "\n".join(r["texts"])]
    assert len(found) == 1
    request: dict[str, Any] = found[0]
    return request


async def sent_config(emulator: str, tag: str) -> dict[str, Any]:
    config: dict[str, Any] = (await sent(emulator, tag))["generation_config"]
    return config


async def turn(client: httpx.AsyncClient, question: str) -> tuple[dict[str, Any], str]:
    user = await make_user(client, prefix="think")
    r = await client.post(QUERY, json={"question": question}, headers=user.headers)
    assert r.status_code == 200, r.text
    return r.json(), user.user_id


async def ttft_ms(settings: Settings, message_id: str) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        value = await conn.fetchval(
            "SELECT ttft_ms FROM messages WHERE id = $1", uuid.UUID(message_id)
        )
    finally:
        await conn.close()
    return int(value)


async def test_chat_turns_ask_for_no_thinking_by_default(
    gclient: httpx.AsyncClient, gemini_server: RunningServer, emulator: str
) -> None:
    tag = f"태그{uuid.uuid4().hex[:8]}"
    body, _ = await turn(gclient, f"{tag} 생각 없이 답해 주세요")
    config = await sent_config(emulator, tag)
    assert config["thinkingConfig"] == {"thinkingBudget": 0}
    assert config["maxOutputTokens"] == gemini_server.settings.llm_max_output_tokens
    assert body["usage"]["thought_tokens"] is None
    assert body["finish_reason"] == "stop"
    # Stable part first (persona, then the type), the turn's own part last.
    texts = (await sent(emulator, tag))["texts"]
    assert texts[0] == system_instruction("HHH")
    assert texts[0].startswith(PERSONA)
    assert texts[-1].startswith(f"리더의 질문: {tag}")


async def test_a_thinking_budget_is_sent_recorded_and_delays_the_first_token(
    settings: Settings, emulator: str, gclient: httpx.AsyncClient
) -> None:
    plain, _ = await turn(gclient, "빠른 답 부탁드립니다")
    thinking = gemini_settings(settings, emulator).with_overrides(gemini_thinking_budget=400)
    running = await start_server(thinking)
    tag = f"태그{uuid.uuid4().hex[:8]}"
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            body, user_id = await turn(client, f"{tag} 생각하고 답해 주세요")
    finally:
        await stop_server(running)
    config = await sent_config(emulator, tag)
    assert config["thinkingConfig"] == {"thinkingBudget": 400}
    # Thought tokens spend maxOutputTokens: the answer keeps its own room.
    assert config["maxOutputTokens"] == settings.llm_max_output_tokens + 400
    assert body["usage"]["thought_tokens"] == 400
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] + 400
    )
    # 400 thought tokens at the emulator's 2 ms each.
    slow = await ttft_ms(settings, body["message_id"])
    fast = await ttft_ms(settings, plain["message_id"])
    assert slow - fast >= 600, (slow, fast)

    conn = await asyncpg.connect(settings.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT thought_tokens, prompt_tokens, completion_tokens FROM usage_daily "
            "WHERE user_id = $1",
            user_id,
        )
        stored = await conn.fetchval(
            "SELECT thought_tokens FROM messages WHERE id = $1", uuid.UUID(body["message_id"])
        )
    finally:
        await conn.close()
    assert row["thought_tokens"] == 400 and stored == 400


async def test_cached_prefix_tokens_are_recorded_in_usage_and_metrics(
    gclient: httpx.AsyncClient, gemini_server: RunningServer
) -> None:
    user = await make_user(gclient, prefix="cache")
    marker = "[[emulator:cache_min_tokens=0]]"
    cached: list[int | None] = []
    conversation_id = None
    for question in ("회의 진행 팁", "피드백 주는 법"):
        payload: dict[str, Any] = {"question": f"{question} {marker}"}
        if conversation_id:
            payload["conversation_id"] = conversation_id
        r = await gclient.post(QUERY, json=payload, headers=user.headers)
        assert r.status_code == 200, r.text
        conversation_id = r.json()["conversation_id"]
        cached.append(r.json()["usage"]["cached_tokens"])
    # The system instruction (persona, then the type) is the same for every turn of a
    # type, so at least the second turn starts with a prefix the model has seen.
    assert cached[1] and cached[1] > 0
    usage = (await gclient.get("/api/v1/usage", headers=user.headers)).json()
    assert usage["days"][-1]["cached_tokens"] == sum(c or 0 for c in cached)
    metrics = (await gclient.get("/metrics")).text
    line = next(
        x
        for x in metrics.splitlines()
        if x.startswith("linkcoach_llm_tokens_total") and 'kind="cached"' in x
    )
    assert float(line.split()[-1]) >= cached[1]


async def test_reports_send_their_own_thinking_budget_and_count_in_usage(
    gclient: httpx.AsyncClient, emulator: str
) -> None:
    user = await make_user(gclient, leadership_type="LHL", prefix="think")
    r = await gclient.post(
        "/api/v1/coaching/interpretation",
        json={"assessment": {"공유": 2.5, "상호작용": 4.9, "성장": 3.3}},
        headers=user.headers,
    )
    assert r.status_code == 200, r.text
    async with httpx.AsyncClient() as c:
        recent = (await c.get(f"{emulator}/_emulator/requests")).json()
    reports = [
        x for x in recent if x["generation_config"].get("responseMimeType") == "application/json"
    ]
    assert reports
    # google-genai writes the field in snake_case, which the API accepts too.
    assert reports[-1]["generation_config"]["thinkingConfig"] == {"thinking_budget": -1}
    day = (await gclient.get("/api/v1/usage", headers=user.headers)).json()["days"][-1]
    assert day["reports"] == 1 and day["turns"] == 0
    assert day["prompt_tokens"] > 0 and day["completion_tokens"] > 0


# -- the emulator ------------------------------------------------------------------------


async def generate(emulator: str, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient() as c:
        r = await c.post(
            f"{emulator}/v1beta/models/gemini-2.5-flash:generateContent",
            json=body,
            headers={"x-goog-api-key": "k"},
        )
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    return result


async def test_emulator_thinking_spends_the_output_budget_first(emulator: str) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "긴 답을 주세요"}]}],
        "generationConfig": {"maxOutputTokens": 60, "thinkingConfig": {"thinkingBudget": 50}},
    }
    answer = await generate(emulator, body)
    usage = answer["usageMetadata"]
    assert usage["thoughtsTokenCount"] == 50
    assert usage["candidatesTokenCount"] <= 10
    assert answer["candidates"][0]["finishReason"] == "MAX_TOKENS"
    body["generationConfig"] = {"maxOutputTokens": 60, "thinkingConfig": {"thinkingBudget": 60}}
    empty = await generate(emulator, body)
    assert empty["candidates"][0]["content"]["parts"][0]["text"] == ""
    body["generationConfig"] = {"thinkingConfig": {"thinkingBudget": 0}}
    plain = await generate(emulator, body)
    assert "thoughtsTokenCount" not in plain["usageMetadata"]
    assert plain["candidates"][0]["finishReason"] == "STOP"


async def test_emulator_reports_a_repeated_prefix_as_cached(emulator: str) -> None:
    system = {"parts": [{"text": f"시스템 지시 {uuid.uuid4().hex} " + "코치 " * 2000}]}

    def body(question: str) -> dict[str, Any]:
        return {
            "systemInstruction": system,
            "contents": [{"role": "user", "parts": [{"text": question}]}],
        }

    first = (await generate(emulator, body("첫 질문")))["usageMetadata"]
    second = (await generate(emulator, body("다른 질문")))["usageMetadata"]
    assert "cachedContentTokenCount" not in first
    system_tokens = (len(system["parts"][0]["text"].encode()) + 3) // 4
    assert second["cachedContentTokenCount"] == system_tokens >= 1024
    assert second["cachedContentTokenCount"] < second["promptTokenCount"]


def test_models_without_thinking_are_sent_no_thinking_config() -> None:
    from linkcoach_stream.llm.gemini import thinks

    assert thinks("gemini-2.5-flash") and thinks("models/gemini-2.5-pro")
    assert thinks("gemini-3-flash")
    assert not thinks("gemini-2.0-flash") and not thinks("models/gemini-1.5-pro")
