"""The report endpoints against the in-process server with the offline provider."""

from __future__ import annotations

import re
import uuid

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from linkcoach_stream.domain.assessment_items import ITEM_IDS
from linkcoach_stream.domain.taxonomy import FOLLOWERSHIP_TYPES
from tests.conftest import RunningServer, User, make_user
from tests.reports.conftest import INTERPRET, answers_at, drop_hot_copies

HANGUL = re.compile(r"[가-힣]")
SCORES = {"공유": 4.8, "상호작용": 3.2, "성장": 5.0}


async def interpret(client: httpx.AsyncClient, user: User, body: dict) -> httpx.Response:
    return await client.post(INTERPRET, json=body, headers=user.headers)


async def test_scores_decide_the_type_by_the_four_and_a_half_rule(
    client: httpx.AsyncClient, alice: User
) -> None:
    r = await interpret(client, alice, {"assessment": SCORES, "leadership_type": "LLL"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["leadership_code"] == "HLH"
    assert data["leadership_type"] == "참여비전형"
    assert data["scores"] == SCORES
    assert data["cached"] is False
    assert data["provider"] == "offline"
    assert "confidence" not in data
    uuid.UUID(data["report_id"])
    assert data["expires_at"] > data["created_at"]
    assert {s["path"] for s in data["sources"]} == {
        "leadership_types/participative-vision.md",
        "followership/pairing-participative-vision.md",
    }


async def test_raw_answers_go_through_the_classifier(
    client: httpx.AsyncClient, alice: User
) -> None:
    r = await interpret(client, alice, {"assessment": {"answers": answers_at(6, 2, 6)}})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["leadership_code"] == "HLH"
    assert 0 < data["confidence"] <= 1
    assert set(data["all_scores"]) == {"HHH", "HHL", "HLH", "HLL", "LHH", "LHL", "LLH", "LLL"}
    assert data["all_scores"]["HLH"] == data["confidence"]
    assert data["scores"] == {"공유": 6.0, "상호작용": 2.0, "성장": 6.0}


@pytest.mark.parametrize(
    ("name", "code"),
    [("참여친밀형", "HHL"), ("INDIVIDUAL_VISION", "LLH"), ("lhl", "LHL")],
)
async def test_leadership_type_accepts_a_code_an_id_or_a_korean_name(
    client: httpx.AsyncClient, alice: User, name: str, code: str
) -> None:
    r = await interpret(client, alice, {"leadership_type": name})
    assert r.status_code == 200, r.text
    assert r.json()["leadership_code"] == code
    assert r.json()["scores"] is None


async def test_the_tokens_type_is_the_last_resort_and_none_at_all_is_422(
    client: httpx.AsyncClient, alice: User
) -> None:
    r = await interpret(client, alice, {})
    assert r.status_code == 200, r.text
    assert r.json()["leadership_code"] == "HHH"  # alice's token says HHH

    nobody = await make_user(client, leadership_type=None)
    r = await interpret(client, nobody, {})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "leadership_type"
    r = await interpret(client, nobody, {"leadership_type": "리더형"})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "leadership_type"


def _answers(**changes: object) -> dict:
    answers: dict[str, object] = dict(answers_at(4, 4, 4))
    for key, value in changes.items():
        if value is ...:
            del answers[key]
        else:
            answers[key] = value
    return {"answers": answers}


@pytest.mark.parametrize(
    ("assessment", "field"),
    [
        ({"공유": 7, "상호작용": 3, "성장": 3}, "assessment.공유"),
        ({"공유": 4, "상호작용": 0.5, "성장": 3}, "assessment.상호작용"),
        ({"공유": 4, "상호작용": 3, "성장": "5"}, "assessment.성장"),
        ({"공유": 4, "상호작용": 3, "성장": True}, "assessment.성장"),
        ({"공유": 4, "상호작용": 3}, "assessment.성장"),
        ({"공유": 4, "상호작용": 3, "성장": 3, "리더십": 2}, "assessment.리더십"),
        ({"sharing": 4}, "assessment.sharing"),
        ({}, "assessment"),
        ([4, 3, 5], "assessment"),
        ("HHH", "assessment"),
        (_answers(S3=7), "assessment.answers.S3"),
        (_answers(I2=0), "assessment.answers.I2"),
        (_answers(G1=4.5), "assessment.answers.G1"),
        (_answers(G1="4"), "assessment.answers.G1"),
        (_answers(S1=None), "assessment.answers.S1"),
        (_answers(G6=...), "assessment.answers.G6"),
        (_answers(s1=3), "assessment.answers.s1"),
        ({"answers": [1] * 18}, "assessment.answers"),
        ({"answers": dict.fromkeys(ITEM_IDS, 3), "공유": 4}, "assessment.공유"),
    ],
)
async def test_invalid_assessment_is_422_naming_the_field(
    client: httpx.AsyncClient, alice: User, assessment: object, field: str
) -> None:
    r = await interpret(client, alice, {"assessment": assessment})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert error["field"] == field
    assert field in error["message"]


async def test_unknown_body_keys_and_missing_token_are_refused(
    client: httpx.AsyncClient, alice: User
) -> None:
    r = await interpret(client, alice, {"leadership": "HHH"})
    assert r.status_code == 422
    r = await client.post(INTERPRET, json={"leadership_type": "HHH"})
    assert r.status_code == 401


async def test_offline_report_is_complete_and_korean(
    client: httpx.AsyncClient, alice: User
) -> None:
    for code in ("HHH", "HLL", "HLH", "HHL", "LHH", "LLH", "LHL", "LLL"):
        r = await interpret(client, alice, {"leadership_type": code})
        assert r.status_code == 200, r.text
        report = r.json()["report"]
        assert report["summary"].startswith("[오프라인 리포트]")
        assert HANGUL.search(report["summary"])
        assert len(report["strengths"]) == 3
        assert len(report["improvements"]) == 2
        assert len(report["followership"]) == 5
        assert [f["type"] for f in report["followership"]] == list(FOLLOWERSHIP_TYPES)
        assert report["risk_signals"]
        texts: list[str] = []
        for s in report["strengths"]:
            texts += [s["title"], s["description"]]
        for i in report["improvements"]:
            texts += [i["title"], i["description"], i["action"]]
        texts += [report["action_plan"][k] for k in ("immediate", "short_term", "long_term")]
        for f in report["followership"]:
            assert 0 <= f["score"] <= 100
            texts += [f["name"], f["synergy"], f["caution"], f["how_to_work_together"]]
        for rs in report["risk_signals"]:
            texts += [rs["signal"], rs["action"]]
        for text in texts:
            assert text.strip(), (code, texts)
            assert HANGUL.search(text), (code, text)
        # Each follower entry comes from its own section of the pairing guide.
        assert len({f["caution"] for f in report["followership"]}) == 5


async def test_second_request_is_served_from_redis_then_postgres_after_the_hot_copy_goes(
    client: httpx.AsyncClient,
    server: RunningServer,
    redis_client: aioredis.Redis,
) -> None:
    user = await make_user(client, prefix="cache")
    body = {"assessment": {"공유": 2.5, "상호작용": 5.5, "성장": 4.5}}
    first = (await interpret(client, user, body)).json()
    assert first["cached"] is False

    second = await interpret(client, user, body)
    assert second.json()["cached"] is True
    assert second.json()["report_id"] == first["report_id"]
    assert second.json()["report"] == first["report"]

    assert await drop_hot_copies(redis_client, server.settings, user.user_id) == 1
    third = (await interpret(client, user, body)).json()
    assert third["cached"] is True
    assert third["report_id"] == first["report_id"]
    # Reading from Postgres warmed Redis again.
    assert await drop_hot_copies(redis_client, server.settings, user.user_id) == 1

    metrics = (await client.get("/metrics")).text
    assert 'linkcoach_report_cache_total{result="hit",tier="redis"}' in metrics
    assert 'linkcoach_report_cache_total{result="hit",tier="postgres"}' in metrics


async def test_expired_report_is_generated_again_under_the_same_id(
    client: httpx.AsyncClient,
    server: RunningServer,
    redis_client: aioredis.Redis,
) -> None:
    user = await make_user(client, prefix="expiry")
    body = {"leadership_type": "LLH"}
    first = (await interpret(client, user, body)).json()
    conn = await asyncpg.connect(server.settings.database_url)
    try:
        await conn.execute(
            "UPDATE reports SET expires_at = now() - interval '1 second' WHERE id = $1",
            uuid.UUID(first["report_id"]),
        )
    finally:
        await conn.close()
    # Postgres is the durable truth; the hot copy's TTL was set from the old expiry.
    await drop_hot_copies(redis_client, server.settings, user.user_id)
    again = (await interpret(client, user, body)).json()
    assert again["cached"] is False
    assert again["report_id"] == first["report_id"]
    assert again["created_at"] > first["created_at"]
    assert again["expires_at"] > again["created_at"]


async def test_different_inputs_make_different_reports(
    client: httpx.AsyncClient, alice: User
) -> None:
    a = await interpret(client, alice, {"assessment": {"공유": 5, "상호작용": 5, "성장": 5}})
    b = await interpret(client, alice, {"assessment": {"공유": 5, "상호작용": 5, "성장": 5.5}})
    assert a.json()["leadership_code"] == b.json()["leadership_code"] == "HHH"
    assert a.json()["report_id"] != b.json()["report_id"]


async def test_owner_reads_a_report_and_everyone_else_gets_the_same_404(
    client: httpx.AsyncClient, alice: User, bob: User
) -> None:
    created = (await interpret(client, alice, {"leadership_type": "HHH"})).json()
    path = f"/api/v1/reports/{created['report_id']}"
    mine = await client.get(path, headers=alice.headers)
    assert mine.status_code == 200
    assert mine.json()["report"] == created["report"]
    assert mine.json()["leadership_code"] == "HHH"

    theirs = await client.get(path, headers=bob.headers)
    unknown = await client.get(f"/api/v1/reports/{uuid.uuid4()}", headers=alice.headers)
    garbage = await client.get("/api/v1/reports/not-a-uuid", headers=alice.headers)
    assert theirs.status_code == unknown.status_code == garbage.status_code == 404
    assert theirs.json() == unknown.json() == garbage.json()
    assert (await client.get(path)).status_code == 401


async def test_generate_shim_returns_the_summary_as_interpretation(
    client: httpx.AsyncClient, alice: User, bob: User
) -> None:
    r = await client.post(
        "/generate",
        json={"user_id": alice.user_id, "leadership_type": "참여코칭형"},
        headers=alice.headers,
    )
    assert r.status_code == 200, r.text
    data = r.json()
    assert set(data) == {"report_id", "interpretation", "leadership_type", "created_at"}
    assert data["leadership_type"] == "참여코칭형"
    assert isinstance(data["interpretation"], str) and HANGUL.search(data["interpretation"])
    full = (await interpret(client, alice, {"leadership_type": "HHH"})).json()
    assert full["report_id"] == data["report_id"]
    assert full["report"]["summary"] == data["interpretation"]

    # No user_id: the token decides. Someone else's user_id: refused.
    r = await client.post("/generate", json={"leadership_type": "HHH"}, headers=bob.headers)
    assert r.status_code == 200
    r = await client.post(
        "/generate",
        json={"user_id": alice.user_id, "leadership_type": "HHH"},
        headers=bob.headers,
    )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "user_mismatch"
