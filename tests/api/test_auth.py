from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from linkcoach_stream.config import ConfigError, Settings
from linkcoach_stream.services.auth import TokenService
from tests.conftest import API_KEY, RunningServer, User, emulator_stats, make_user


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(settings: Settings, user_id: str, **over: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user_id,
        "iat": now,
        "exp": now + 600,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "jti": "x",
    }
    claims.update(over)
    return claims


def _sign(
    settings: Settings, claims: dict[str, object], *, alg: str = "HS256", key: str = ""
) -> str:
    k = OctKey.import_key(key or settings.jwt_secret_key)
    return jwt.encode({"alg": alg}, claims, k, algorithms=[alg])


async def _status(
    client: httpx.AsyncClient, token: str | None, raw: str | None = None
) -> tuple[int, str]:
    headers = {}
    if raw is not None:
        headers["Authorization"] = raw
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    r = await client.get("/api/v1/conversations", headers=headers)
    body = r.json()
    return r.status_code, body["error"]["code"] if "error" in body else "ok"


async def test_minted_token_opens_protected_routes(client: httpx.AsyncClient, alice: User) -> None:
    assert await _status(client, alice.token) == (200, "ok")


async def test_token_endpoint_requires_a_valid_api_key(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/auth/token", json={"user_id": "x1"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_api_key"
    r = await client.post(
        "/api/v1/auth/token", json={"user_id": "x1"}, headers={"X-API-Key": API_KEY + "x"}
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


async def test_token_request_validates_fields(client: httpx.AsyncClient) -> None:
    h = {"X-API-Key": API_KEY}
    r = await client.post("/api/v1/auth/token", json={"user_id": "bad id\n"}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["field"] == "user_id"
    r = await client.post(
        "/api/v1/auth/token", json={"user_id": "ok", "leadership_type": "슈퍼형"}, headers=h
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "leadership_type"
    r = await client.post("/api/v1/auth/token", content=b"{nope", headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "not_bearer",
        "garbage",
        "bad_signature",
        "alg_none",
        "alg_hs512",
        "expired",
        "wrong_aud",
        "wrong_iss",
        "no_sub",
        "no_exp",
    ],
)
async def test_bad_tokens_are_rejected_with_401(
    client: httpx.AsyncClient, server: RunningServer, alice: User, case: str
) -> None:
    s = server.settings
    raw = None
    token: str | None = None
    if case == "missing":
        pass
    elif case == "not_bearer":
        raw = f"Basic {alice.token}"
    elif case == "garbage":
        token = "abc.def.ghi"
    elif case == "bad_signature":
        token = _sign(s, _claims(s, alice.user_id), key="another-secret-of-sufficient-length")
    elif case == "alg_none":
        token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(s, alice.user_id))}."
    elif case == "alg_hs512":
        token = _sign(s, _claims(s, alice.user_id), alg="HS512")
    elif case == "expired":
        token = _sign(s, _claims(s, alice.user_id, exp=int(time.time()) - 120))
    elif case == "wrong_aud":
        token = _sign(s, _claims(s, alice.user_id, aud="someone-else"))
    elif case == "wrong_iss":
        token = _sign(s, _claims(s, alice.user_id, iss="evil"))
    elif case == "no_sub":
        claims = _claims(s, alice.user_id)
        del claims["sub"]
        token = _sign(s, claims)
    elif case == "no_exp":
        claims = _claims(s, alice.user_id)
        del claims["exp"]
        token = _sign(s, claims)
    status, code = await _status(client, token, raw)
    assert status == 401
    expected = {
        "missing": "missing_token",
        "expired": "token_expired",
    }.get(case, "invalid_token")
    assert code == expected


async def test_token_for_unknown_or_deleted_user_is_rejected(
    client: httpx.AsyncClient, server: RunningServer
) -> None:
    s = server.settings
    token = _sign(s, _claims(s, "never-minted-user"))
    assert await _status(client, token) == (401, "unknown_user")
    user = await make_user(client)
    assert (await _status(client, user.token))[0] == 200
    import asyncpg

    conn = await asyncpg.connect(s.database_url)
    await conn.execute("DELETE FROM users WHERE id = $1", user.user_id)
    await conn.close()
    assert await _status(client, user.token) == (401, "unknown_user")


@pytest.mark.parametrize("deletion", ["hard", "soft"])
async def test_a_turn_for_a_deleted_user_is_refused_before_anything_is_stored_or_asked(
    gclient: httpx.AsyncClient, gemini_server: RunningServer, emulator: str, deletion: str
) -> None:
    # A chat turn looks its user up in its own first statement, not in a separate
    # query at authentication: the refusal must still come before any write or model call.
    import asyncpg

    user = await make_user(gclient)
    r = await gclient.post(
        "/api/v1/coaching/query", json={"question": "첫 질문"}, headers=user.headers
    )
    assert r.status_code == 200, r.text
    conversation_id = r.json()["conversation_id"]
    conn = await asyncpg.connect(gemini_server.settings.database_url)
    try:
        if deletion == "hard":
            await conn.execute("DELETE FROM users WHERE id = $1", user.user_id)
        else:
            await conn.execute(
                "UPDATE users SET deleted_at = now() WHERE id = $1", user.user_id
            )
        messages = "SELECT count(*) FROM messages WHERE user_id = $1"
        before = await conn.fetchval(messages, user.user_id)
        asked = (await emulator_stats(emulator))["total_requests"]
        for path, body in [
            ("/api/v1/coaching/query/stream", {"question": "새 대화"}),
            ("/api/v1/coaching/query", {"question": "새 대화"}),
            (
                "/api/v1/coaching/query/stream",
                {"question": "이어서", "conversation_id": conversation_id},
            ),
            (
                "/api/v1/coaching/query",
                {"question": "이어서", "conversation_id": conversation_id},
            ),
        ]:
            r = await gclient.post(path, json=body, headers=user.headers)
            assert r.status_code == 401, (path, body, r.text)
            assert r.json()["error"]["code"] == "unknown_user"
        assert await conn.fetchval(messages, user.user_id) == before
        assert not await conn.fetchval(
            "SELECT count(*) FROM conversations WHERE user_id = $1 AND title = '새 대화'",
            user.user_id,
        )
        assert (await emulator_stats(emulator))["total_requests"] == asked
    finally:
        await conn.close()


async def test_refresh_rotates_and_reuse_revokes_the_family(
    client: httpx.AsyncClient, alice: User
) -> None:
    r1 = await client.post("/api/v1/auth/refresh", json={"refresh_token": alice.refresh_token})
    assert r1.status_code == 200, r1.text
    second = r1.json()["refresh_token"]
    assert second != alice.refresh_token
    assert (await _status(client, r1.json()["access_token"]))[0] == 200
    # Replaying the first (already used) token revokes the family ...
    r2 = await client.post("/api/v1/auth/refresh", json={"refresh_token": alice.refresh_token})
    assert r2.status_code == 401
    assert r2.json()["error"]["code"] == "refresh_token_reused"
    # ... so even the newest token of that family no longer works.
    r3 = await client.post("/api/v1/auth/refresh", json={"refresh_token": second})
    assert r3.status_code == 401
    assert r3.json()["error"]["code"] == "invalid_refresh_token"


async def test_unknown_refresh_token_is_rejected(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": "x" * 43})
    assert r.status_code == 401


STRONG_SECRET = "Zq8vN2xK7pR4tW9yB3mF6hJ1cL5dG0sA-u_E"


def test_production_refuses_placeholder_secret() -> None:
    with pytest.raises(ConfigError):
        Settings(app_env="production", api_keys=("k" * 20,)).validate()
    with pytest.raises(ConfigError):
        Settings(app_env="production", jwt_secret_key="", api_keys=("k" * 20,)).validate()
    ok = Settings(app_env="production", jwt_secret_key=STRONG_SECRET, api_keys=("k" * 20,))
    assert ok.validate() is ok


def test_production_refuses_missing_api_keys() -> None:
    with pytest.raises(ConfigError):
        Settings(app_env="production", jwt_secret_key=STRONG_SECRET).validate()


def test_token_service_round_trip_keeps_claims() -> None:
    service = TokenService(Settings())
    token, ttl = service.mint_access(user_id="u-1", email="a@b.c", leadership_type="HLH")
    principal = service.verify_access(token)
    assert (principal.user_id, principal.email, principal.leadership_type) == (
        "u-1",
        "a@b.c",
        "HLH",
    )
    assert ttl == Settings().access_token_ttl_s
