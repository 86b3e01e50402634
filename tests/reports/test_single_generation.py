"""Concurrent identical requests trigger exactly one generation, in one process and
across processes, counted at the Gemini emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from linkcoach_stream.config import Settings
from linkcoach_stream.domain.compatibility import compatibility_scores
from linkcoach_stream.domain.taxonomy import FOLLOWERSHIP_TYPES
from tests.conftest import (
    RunningServer,
    ServerProcess,
    emulator_stats,
    gemini_settings,
    make_user,
)
from tests.reports.conftest import INTERPRET


async def generations(emulator: str) -> int:
    stats = await emulator_stats(emulator)
    return int(stats["requests"].get("generateContent", 0))


@pytest.fixture(scope="module")
async def second_instance(settings: Settings, emulator: str) -> AsyncIterator[ServerProcess]:
    proc = await ServerProcess(gemini_settings(settings, emulator)).start()
    try:
        yield proc
    finally:
        await proc.stop()


async def test_gemini_report_is_structured_and_scores_are_computed(
    gclient: httpx.AsyncClient, emulator: str
) -> None:
    user = await make_user(gclient, prefix="gem")
    scores = {"공유": 5.5, "상호작용": 2.0, "성장": 3.0}
    before = await generations(emulator)
    r = await gclient.post(INTERPRET, json={"assessment": scores}, headers=user.headers)
    assert r.status_code == 200, r.text
    data = r.json()
    assert await generations(emulator) - before == 1
    assert data["provider"] == "gemini"
    assert data["leadership_code"] == "HLL"
    report = data["report"]
    assert len(report["strengths"]) == 3 and len(report["improvements"]) == 2
    assert [f["type"] for f in report["followership"]] == list(FOLLOWERSHIP_TYPES)
    expected = compatibility_scores("HLL", scores)
    assert {f["type"]: f["score"] for f in report["followership"]} == expected
    assert all(
        f["synergy"] and f["caution"] and f["how_to_work_together"] for f in report["followership"]
    )
    assert data["sources"], "retrieval (or the knowledge-base files) grounded the prompt"


async def test_ten_concurrent_identical_requests_generate_once(
    gclient: httpx.AsyncClient, emulator: str
) -> None:
    user = await make_user(gclient, prefix="herd")
    body = {"assessment": {"공유": 4.9, "상호작용": 4.9, "성장": 1.5}}
    before = await generations(emulator)
    responses = await asyncio.gather(
        *(gclient.post(INTERPRET, json=body, headers=user.headers) for _ in range(10))
    )
    assert [r.status_code for r in responses] == [200] * 10
    assert await generations(emulator) - before == 1
    bodies = [r.json() for r in responses]
    assert len({b["report_id"] for b in bodies}) == 1
    assert sorted(b["cached"] for b in bodies) == [False] + [True] * 9
    assert all(b["report"] == bodies[0]["report"] for b in bodies)


async def test_concurrent_requests_across_two_processes_generate_once(
    gemini_server: RunningServer,
    gclient: httpx.AsyncClient,
    second_instance: ServerProcess,
    emulator: str,
) -> None:
    user = await make_user(gclient, prefix="herd2")
    body = {"assessment": {"공유": 1.0, "상호작용": 6.0, "성장": 4.5}}
    before = await generations(emulator)
    async with httpx.AsyncClient(base_url=second_instance.url, timeout=30) as other:
        responses = await asyncio.gather(
            *(
                (gclient if i % 2 else other).post(INTERPRET, json=body, headers=user.headers)
                for i in range(10)
            )
        )
    assert [r.status_code for r in responses] == [200] * 10
    assert await generations(emulator) - before == 1
    bodies = [r.json() for r in responses]
    assert len({b["report_id"] for b in bodies}) == 1
    assert sum(not b["cached"] for b in bodies) == 1
