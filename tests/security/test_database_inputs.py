"""Values Postgres cannot store or compare are refused at the edge, naming the field:
NUL characters in text, timestamps and sequence numbers outside what the columns hold.
After each refusal the same client's next ordinary request still works (the pool's
connection was not left broken)."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import API_KEY, User, make_user

CONVERSATIONS = "/api/v1/conversations"


def conversation_cursor(stamp: str, conversation_id: uuid.UUID | None = None) -> str:
    raw = f"{stamp}|{conversation_id or uuid.uuid4()}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def still_works(client: httpx.AsyncClient, user: User) -> None:
    r = await client.get(CONVERSATIONS, headers=user.headers)
    assert r.status_code == 200, r.text
    r = await client.post(CONVERSATIONS, json={"title": "정상 대화"}, headers=user.headers)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (CONVERSATIONS, {"title": "팀\x00회의"}, "title"),
        (CONVERSATIONS, {"title": "\x00"}, "title"),
        (CONVERSATIONS, {"title": "가" * 201}, "title"),
        ("/api/v1/coaching/query", {"question": "질문", "client_message_id": "m\x001"}, None),
        ("/api/v1/coaching/query/stream", {"question": "질문", "client_message_id": "\x00"}, None),
    ],
)
async def test_text_postgres_cannot_store_is_422_naming_the_field(
    client: httpx.AsyncClient, alice: User, path: str, body: dict[str, Any], field: str | None
) -> None:
    field = field or "client_message_id"
    r = await client.post(path, json=body, headers=alice.headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert error["field"] == field and field in error["message"]
    await still_works(client, alice)


async def test_a_title_of_exactly_the_limit_is_kept(client: httpx.AsyncClient, alice: User) -> None:
    r = await client.post(CONVERSATIONS, json={"title": "가" * 200}, headers=alice.headers)
    assert r.status_code == 201, r.text
    assert r.json()["title"] == "가" * 200


async def test_nul_in_a_minted_email_is_422_naming_the_field(
    client: httpx.AsyncClient, alice: User
) -> None:
    r = await client.post(
        "/api/v1/auth/token",
        json={"user_id": f"nul-{uuid.uuid4().hex[:8]}", "email": "a\x00@example.com"},
        headers={"X-API-Key": API_KEY},
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "email"
    await still_works(client, alice)


@pytest.mark.parametrize(
    "stamp",
    [
        "0001-01-01T00:00:00+05:00",
        "0001-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59-05:00",
        "9999-12-31T23:59:59.999999-00:01",
    ],
)
async def test_conversation_cursor_outside_the_calendar_in_utc_is_400(
    client: httpx.AsyncClient, alice: User, stamp: str
) -> None:
    r = await client.get(
        CONVERSATIONS, params={"cursor": conversation_cursor(stamp)}, headers=alice.headers
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_query" and error["field"] == "cursor"
    await still_works(client, alice)


@pytest.mark.parametrize(
    ("stamp", "listed"),
    [
        ("0001-01-01T00:00:00+00:00", 0),
        ("0001-01-01T00:00:00", 0),
        ("9999-12-31T23:59:59.999999+00:00", 1),
        ("9999-12-31T23:59:59", 1),
    ],
)
async def test_conversation_cursor_at_the_ends_of_the_calendar_pages(
    client: httpx.AsyncClient, stamp: str, listed: int
) -> None:
    user = await make_user(client)
    await client.post(CONVERSATIONS, json={}, headers=user.headers)
    r = await client.get(
        CONVERSATIONS, params={"cursor": conversation_cursor(stamp)}, headers=user.headers
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == listed


@pytest.mark.parametrize("cursor", [str(2**63), str(-(2**63) - 1), str(10**40), "-1"])
async def test_message_cursor_beyond_bigint_is_400(
    client: httpx.AsyncClient, alice: User, cursor: str
) -> None:
    conv = (await client.post(CONVERSATIONS, json={}, headers=alice.headers)).json()
    r = await client.get(
        f"{CONVERSATIONS}/{conv['id']}", params={"cursor": cursor}, headers=alice.headers
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_query" and error["field"] == "cursor"
    await still_works(client, alice)


async def test_cursors_the_server_hands_out_still_page(
    client: httpx.AsyncClient, alice: User
) -> None:
    for i in range(3):
        await client.post(CONVERSATIONS, json={"title": f"대화 {i}"}, headers=alice.headers)
    page = (await client.get(CONVERSATIONS, params={"limit": 2}, headers=alice.headers)).json()
    assert page["next_cursor"]
    rest = await client.get(
        CONVERSATIONS, params={"limit": 2, "cursor": page["next_cursor"]}, headers=alice.headers
    )
    assert rest.status_code == 200 and len(rest.json()["items"]) == 1
    biggest = await client.get(
        f"{CONVERSATIONS}/{page['items'][0]['id']}",
        params={"cursor": str(2**63 - 1)},
        headers=alice.headers,
    )
    assert biggest.status_code == 200 and biggest.json()["messages"] == []
