"""Admission control: at most MAX_ACTIVE_STREAMS answers at once per process, fast 503s
past it, `/ready` overloaded above the high-water mark, slots given back on every exit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import (
    RunningServer,
    User,
    client_of,
    gemini_settings,
    make_user,
    read_sse,
    serving,
)

STREAM = "/api/v1/coaching/query/stream"
LONG = "길게 답해 주세요 [[emulator:chunks=200,chunk_interval_ms=30]]"
MAX_ACTIVE = 3


@pytest.fixture(scope="module")
async def admitting(settings, emulator) -> AsyncIterator[RunningServer]:  # type: ignore[no-untyped-def]
    async with serving(
        gemini_settings(settings, emulator).with_overrides(
            max_active_streams=MAX_ACTIVE,
            ready_high_water=0.6,  # 2 of 3
            busy_retry_after_s=2.0,
            max_streams_per_user=0,
            rate_turns_per_min=600.0,
        )
    ) as running:
        yield running


@pytest.fixture
async def aclient(admitting: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(admitting) as c:
        yield c


async def open_long_stream(client: httpx.AsyncClient, user: User) -> tuple[httpx.Response, str]:
    request = client.build_request("POST", STREAM, json={"question": LONG}, headers=user.headers)
    response = await client.send(request, stream=True)
    assert response.status_code == 200, await response.aread()
    meta = (await read_sse(response, stop_after=1))[0]
    assert meta.event == "meta"
    return response, meta.data["message_id"]


async def cancel(client: httpx.AsyncClient, user: User, message_id: str) -> None:
    r = await client.post(f"/api/v1/coaching/streams/{message_id}/cancel", headers=user.headers)
    assert r.status_code in (200, 202)


async def wait_ready(client: httpx.AsyncClient) -> httpx.Response:
    for _ in range(100):
        r = await client.get("/ready")
        if r.status_code == 200:
            return r
        await asyncio.sleep(0.05)
    return r


async def test_turns_past_the_limit_get_a_fast_server_busy_with_jittered_retry_after(
    aclient: httpx.AsyncClient,
) -> None:
    user = await make_user(aclient)
    assert (await aclient.get("/ready")).status_code == 200
    held = [await open_long_stream(aclient, user) for _ in range(MAX_ACTIVE)]
    try:
        ready = await aclient.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "overloaded"
        assert ready.json()["error"]["code"] == "overloaded"
        assert int(ready.headers["retry-after"]) >= 1

        refusals = []
        for i in range(8):
            started = time.perf_counter()
            r = await aclient.post(STREAM, json={"question": f"질문 {i}"}, headers=user.headers)
            elapsed = time.perf_counter() - started
            refusals.append((r, elapsed))
        for r, elapsed in refusals:
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["code"] == "server_busy"
            assert 2.0 <= error["retry_after"] < 4.0
            assert 2 <= int(r.headers["retry-after"]) <= 4
            assert elapsed < 0.5, f"a refusal took {elapsed * 1000:.0f} ms"
        jitter = {r.json()["error"]["retry_after"] for r, _ in refusals}
        assert len(jitter) > 1, "refused clients are told different times to come back"

        # The refusal comes before any work, authentication included: a full process
        # spends no database connection or Redis round trip on a turn it cannot take.
        anonymous = await aclient.post(STREAM, json={"question": "토큰 없이"})
        assert anonymous.status_code == 503
        assert anonymous.json()["error"]["code"] == "server_busy"
        assert "db" not in anonymous.headers["server-timing"]
        # Every way to start a turn is held to the same limit.
        query = await aclient.post(
            "/api/v1/coaching/query", json={"question": "바로 답"}, headers=user.headers
        )
        assert query.status_code == 503 and query.json()["error"]["code"] == "server_busy"
        metrics = (await aclient.get("/metrics")).text
        assert "linkcoach_admitted_generations 3.0" in metrics
        refused = [m for m in metrics.splitlines() if m.startswith("linkcoach_admission_refused")]
        assert refused and float(refused[0].rsplit(" ", 1)[1]) >= 10
    finally:
        for response, message_id in held:
            await cancel(aclient, user, message_id)
            await response.aclose()

    assert (await wait_ready(aclient)).status_code == 200
    async with aclient.stream(
        "POST", STREAM, json={"question": "이제 되나요?"}, headers=user.headers
    ) as r:
        assert r.status_code == 200
        events = await read_sse(r)
    assert events[-1].event == "done"


async def test_a_slot_is_given_back_when_the_answer_fails_or_the_client_leaves(
    aclient: httpx.AsyncClient,
) -> None:
    user = await make_user(aclient)
    # A provider failure before the first chunk ends the job with an error event.
    for _ in range(MAX_ACTIVE + 2):
        async with aclient.stream(
            "POST",
            STREAM,
            json={"question": "실패 [[emulator:fault=before_first]]"},
            headers=user.headers,
        ) as r:
            assert r.status_code == 200
            events = await read_sse(r)
        assert events[-1].event == "error"
    # A client that disconnects does not stop its answer: the slot stays taken until the
    # answer ends, then comes back.
    short = "짧게 [[emulator:chunks=6,chunk_interval_ms=40]]"
    for _ in range(MAX_ACTIVE):
        request = aclient.build_request(
            "POST", STREAM, json={"question": short}, headers=user.headers
        )
        response = await aclient.send(request, stream=True)
        assert response.status_code == 200
        await response.aclose()
    assert (await wait_ready(aclient)).status_code == 200
    async with aclient.stream("POST", STREAM, json={"question": "다시"}, headers=user.headers) as r:
        assert r.status_code == 200
        assert (await read_sse(r))[-1].event == "done"
    metrics = (await aclient.get("/metrics")).text
    assert "linkcoach_admitted_generations 0.0" in metrics


async def test_a_replayed_turn_takes_no_slot(aclient: httpx.AsyncClient) -> None:
    user = await make_user(aclient)
    body = {"question": "한 번만 [[emulator:chunks=3]]", "client_message_id": "once-1"}
    first = await aclient.post("/api/v1/coaching/query", json=body, headers=user.headers)
    assert first.status_code == 200
    conversation_id = first.json()["conversation_id"]
    again = {**body, "conversation_id": conversation_id, "client_message_id": "twice-1"}
    assert (
        await aclient.post("/api/v1/coaching/query", json=again, headers=user.headers)
    ).status_code == 200
    for _ in range(MAX_ACTIVE + 1):
        replay = await aclient.post("/api/v1/coaching/query", json=again, headers=user.headers)
        assert replay.status_code == 200
    metrics = (await aclient.get("/metrics")).text
    assert "linkcoach_admitted_generations 0.0" in metrics


async def test_the_websocket_gets_server_busy_as_an_error_frame(
    aclient: httpx.AsyncClient, admitting: RunningServer
) -> None:
    import json

    from websockets.asyncio.client import connect

    user = await make_user(aclient)
    held = [await open_long_stream(aclient, user) for _ in range(MAX_ACTIVE)]
    try:
        url = admitting.url.replace("http", "ws") + "/api/v1/coaching/ws"
        async with connect(url, subprotocols=["bearer", user.token]) as ws:  # type: ignore[list-item]
            frames = []
            await ws.send(json.dumps({"type": "question", "question": "웹소켓 질문"}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                frames.append(frame)
                if frame["type"] == "error":
                    break
        assert frames[-1]["code"] == "server_busy"
    finally:
        for response, message_id in held:
            await cancel(aclient, user, message_id)
            await response.aclose()
    assert (await wait_ready(aclient)).status_code == 200


async def test_a_regeneration_is_held_to_the_same_limit(aclient: httpx.AsyncClient) -> None:
    user = await make_user(aclient)
    async with aclient.stream(
        "POST", STREAM, json={"question": "짧은 질문"}, headers=user.headers
    ) as r:
        events = await read_sse(r)
    answer_id = events[0].data["message_id"]
    assert events[-1].event == "done"
    held = [await open_long_stream(aclient, user) for _ in range(MAX_ACTIVE)]
    try:
        r = await aclient.post(
            f"/api/v1/messages/{answer_id}/regenerate", json={}, headers=user.headers
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "server_busy"
    finally:
        for response, message_id in held:
            await cancel(aclient, user, message_id)
            await response.aclose()
    assert (await wait_ready(aclient)).status_code == 200
    async with aclient.stream(
        "POST", f"/api/v1/messages/{answer_id}/regenerate", json={}, headers=user.headers
    ) as r:
        assert r.status_code == 200
        again = await read_sse(r)
    assert again[-1].event == "done"


def test_the_jittered_retry_after_stays_under_two_periods_as_shown() -> None:
    """A draw just under two periods is shown as under two, not rounded up to it."""
    import random

    from linkcoach_stream.errors import ServerBusy
    from linkcoach_stream.services.admission import Admission

    class Top(random.Random):
        def random(self) -> float:
            return 0.99999

    admission = Admission(max_active=1, high_water=1.0, retry_after_s=2.0, rng=Top())
    shown = ServerBusy("busy", retry_after=admission.retry_after()).body()["error"]
    assert 2.0 <= shown["retry_after"] < 4.0
