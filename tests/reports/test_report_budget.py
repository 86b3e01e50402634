"""What a report costs: each user has an hourly budget of uncached generations, cached
reports are free, and scores are keyed at the precision the report is written from."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from linkcoach_stream.config import Settings
from tests.conftest import RunningServer, User, client_of, make_user, serving
from tests.reports.conftest import INTERPRET

BUDGET = 3


@pytest.fixture(scope="module")
async def budget_server(settings: Settings) -> AsyncIterator[RunningServer]:
    async with serving(settings.with_overrides(rate_reports_per_hour=float(BUDGET))) as running:
        yield running


@pytest.fixture
async def bclient(budget_server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(budget_server) as c:
        yield c


async def interpret(client: httpx.AsyncClient, user: User, body: dict) -> httpx.Response:
    return await client.post(INTERPRET, json=body, headers=user.headers)


def scores(sharing: float, interaction: float = 3.0, growth: float = 5.0) -> dict:
    return {"assessment": {"공유": sharing, "상호작용": interaction, "성장": growth}}


async def test_uncached_reports_past_the_hourly_budget_are_429_with_retry_after(
    bclient: httpx.AsyncClient,
) -> None:
    user = await make_user(bclient, prefix="budget")
    bodies = [scores(1.0 + i) for i in range(BUDGET + 1)]
    for body in bodies[:BUDGET]:
        r = await interpret(bclient, user, body)
        assert r.status_code == 200, r.text
        assert r.json()["cached"] is False

    refused = await interpret(bclient, user, bodies[BUDGET])
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["retry_after"] > 0
    assert int(refused.headers["Retry-After"]) >= 1
    # A type-only report is a generation too.
    assert (await interpret(bclient, user, {"leadership_type": "LLL"})).status_code == 429

    # Reports already generated stay free, from either cache tier.
    for body in bodies[:BUDGET]:
        again = await interpret(bclient, user, body)
        assert again.status_code == 200 and again.json()["cached"] is True

    # The budget is per user.
    other = await make_user(bclient, prefix="budget")
    assert (await interpret(bclient, other, bodies[BUDGET])).status_code == 200


async def test_scores_differing_only_past_one_decimal_share_one_generation(
    client: httpx.AsyncClient,
) -> None:
    user = await make_user(client, prefix="precision")
    first = await interpret(client, user, scores(4.81, 3.2, 5.0))
    assert first.status_code == 200, first.text
    assert first.json()["cached"] is False
    # The report is written from the scores at one decimal; so is the stored copy.
    assert first.json()["scores"] == {"공유": 4.8, "상호작용": 3.2, "성장": 5.0}

    for nearby in (scores(4.8449, 3.2049, 4.9951), scores(4.7501, 3.1501, 5.0)):
        again = await interpret(client, user, nearby)
        assert again.status_code == 200, again.text
        assert again.json()["cached"] is True
        assert again.json()["report_id"] == first.json()["report_id"]
        assert again.json()["report"] == first.json()["report"]

    moved = await interpret(client, user, scores(4.86, 3.2, 5.0))
    assert moved.json()["cached"] is False
    assert moved.json()["report_id"] != first.json()["report_id"]


async def test_scores_that_round_alike_but_fall_either_side_of_high_are_two_reports(
    client: httpx.AsyncClient,
) -> None:
    user = await make_user(client, prefix="precision")
    low = (await interpret(client, user, scores(4.46))).json()
    high = (await interpret(client, user, scores(4.54))).json()
    assert low["leadership_code"][0] == "L" and high["leadership_code"][0] == "H"
    assert low["report_id"] != high["report_id"]
    assert low["scores"] == high["scores"]


async def test_scores_rounded_once_share_a_report_that_keeps_their_type_and_one_decimal(
    client: httpx.AsyncClient,
) -> None:
    user = await make_user(client, prefix="precision")
    first = await interpret(client, user, scores(1.3, 4.47, 5.0))
    assert first.status_code == 200, first.text
    assert first.json()["leadership_code"] == "LLH"
    assert first.json()["scores"] == {"공유": 1.3, "상호작용": 4.5, "성장": 5.0}

    # 1.34997 is 1.3 at one decimal and 4.49996 is below 4.5: the same report.
    again = await interpret(client, user, scores(1.34997, 4.49996, 5.0))
    assert again.status_code == 200, again.text
    assert again.json()["cached"] is True
    assert again.json()["report_id"] == first.json()["report_id"]
    assert again.json()["leadership_code"] == "LLH"
