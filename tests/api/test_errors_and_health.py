from __future__ import annotations

import asyncio

import asyncpg
import httpx

from tests.conftest import ALLOWED_ORIGIN, RunningServer, User


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["postgres"] == "ok"
    assert ready.json()["checks"]["redis"] == "ok"


async def test_unknown_route_and_wrong_method_are_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.put("/api/v1/conversations")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_malformed_json_wrong_types_and_oversize(
    client: httpx.AsyncClient, alice: User
) -> None:
    h = alice.headers
    r = await client.post("/api/v1/conversations", content=b'{"title": ', headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = await client.post("/api/v1/conversations", json=[1, 2], headers=h)
    assert r.status_code == 422 and r.json()["error"]["field"] == "body"
    r = await client.post("/api/v1/conversations", json={"title": 5}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["field"] == "title"
    r = await client.post("/api/v1/conversations", json={"report_id": "zz"}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["field"] == "report_id"
    r = await client.post("/api/v1/conversations", content=b"\xff\xfe\x00", headers=h)
    assert r.status_code == 400
    big = b'{"title": "' + b"a" * (70 * 1024) + b'"}'
    r = await client.post("/api/v1/conversations", content=big, headers=h)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


async def test_oversize_chunked_body_without_length_is_413(
    client: httpx.AsyncClient, alice: User
) -> None:
    async def body():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b"a" * 1024

    r = await client.post("/api/v1/conversations", content=body(), headers=alice.headers)
    assert r.status_code == 413


async def test_cors_allows_listed_origin_only(client: httpx.AsyncClient) -> None:
    pre = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Content-Type, Authorization",
    }
    ok = await client.options("/api/v1/conversations", headers={"Origin": ALLOWED_ORIGIN, **pre})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    bad = await client.options(
        "/api/v1/conversations", headers={"Origin": "https://evil.example", **pre}
    )
    assert bad.status_code == 400
    assert "access-control-allow-origin" not in bad.headers


async def test_requests_are_logged_to_api_logs(
    client: httpx.AsyncClient, server: RunningServer, alice: User
) -> None:
    r = await client.get(
        "/api/v1/conversations", headers={**alice.headers, "X-Request-ID": "req-abc-1"}
    )
    assert r.headers["x-request-id"] == "req-abc-1"
    conn = await asyncpg.connect(server.settings.database_url)
    try:
        for _ in range(100):
            row = await conn.fetchrow(
                "SELECT user_id, method, endpoint, status FROM api_logs WHERE request_id = $1",
                "req-abc-1",
            )
            if row:
                break
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    assert row is not None
    assert dict(row) == {
        "user_id": alice.user_id,
        "method": "GET",
        "endpoint": "/api/v1/conversations",
        "status": 200,
    }


async def test_request_id_with_control_characters_is_replaced(client: httpx.AsyncClient) -> None:
    r = await client.get("/health", headers={"X-Request-ID": "abc def<script>"})
    assert r.headers["x-request-id"] != "abc def<script>"
    assert len(r.headers["x-request-id"]) == 32


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient) -> None:
    await client.get("/health")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert "linkcoach_http_requests_total" in r.text
