from __future__ import annotations

import uuid

import httpx

from tests.conftest import User, make_user


async def test_create_list_get_delete_conversation(client: httpx.AsyncClient, alice: User) -> None:
    created = await client.post(
        "/api/v1/conversations", json={"title": "첫 상담"}, headers=alice.headers
    )
    assert created.status_code == 201, created.text
    conv = created.json()
    assert conv["title"] == "첫 상담"
    assert conv["leadership_type"] == "HHH"

    listed = await client.get("/api/v1/conversations", headers=alice.headers)
    assert [c["id"] for c in listed.json()["items"]] == [conv["id"]]

    got = await client.get(f"/api/v1/conversations/{conv['id']}", headers=alice.headers)
    assert got.status_code == 200
    assert got.json()["messages"] == []

    deleted = await client.delete(f"/api/v1/conversations/{conv['id']}", headers=alice.headers)
    assert deleted.status_code == 204
    again = await client.get(f"/api/v1/conversations/{conv['id']}", headers=alice.headers)
    assert again.status_code == 404


async def test_conversations_are_listed_newest_first_and_paged(client: httpx.AsyncClient) -> None:
    user = await make_user(client)
    ids = []
    for i in range(5):
        r = await client.post(
            "/api/v1/conversations", json={"title": f"대화 {i}"}, headers=user.headers
        )
        ids.append(r.json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (
            await client.get("/api/v1/conversations", params=params, headers=user.headers)
        ).json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


async def test_user_cannot_read_or_delete_another_users_conversation(
    client: httpx.AsyncClient, alice: User, bob: User
) -> None:
    conv = (await client.post("/api/v1/conversations", json={}, headers=alice.headers)).json()
    missing = str(uuid.uuid4())
    for target in (conv["id"], missing):
        r = await client.get(f"/api/v1/conversations/{target}", headers=bob.headers)
        assert r.status_code == 404
        assert r.json() == {"error": {"code": "not_found", "message": "conversation not found"}}
        r = await client.delete(f"/api/v1/conversations/{target}", headers=bob.headers)
        assert r.status_code == 404
    listed = await client.get("/api/v1/conversations", headers=bob.headers)
    assert conv["id"] not in [c["id"] for c in listed.json()["items"]]
    still = await client.get(f"/api/v1/conversations/{conv['id']}", headers=alice.headers)
    assert still.status_code == 200


async def test_non_uuid_conversation_id_is_a_404(client: httpx.AsyncClient, alice: User) -> None:
    r = await client.get("/api/v1/conversations/not-a-uuid", headers=alice.headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_bad_paging_parameters_are_400(client: httpx.AsyncClient, alice: User) -> None:
    for params in ({"limit": "0"}, {"limit": "x"}, {"limit": "1000"}, {"cursor": "@@@"}):
        r = await client.get("/api/v1/conversations", params=params, headers=alice.headers)
        assert r.status_code == 400, params
        assert r.json()["error"]["code"] == "invalid_query"


async def test_unknown_report_id_on_create_is_a_404(client: httpx.AsyncClient, alice: User) -> None:
    r = await client.post(
        "/api/v1/conversations", json={"report_id": str(uuid.uuid4())}, headers=alice.headers
    )
    assert r.status_code == 404
