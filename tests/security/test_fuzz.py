"""Schema-driven fuzzing of every HTTP operation in /openapi.json, and of WebSocket
frames: bad input must never produce a 5xx, a stack trace or a hang."""

from __future__ import annotations

import base64
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta, timezone
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import API_KEY, ServerProcess

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
ID_TEXT = st.one_of(
    st.uuids().map(str),
    st.text(min_size=1, max_size=60).filter(
        lambda s: "/" not in s and "?" not in s and "#" not in s
    ),
    st.sampled_from(["..", "%00", "가나다", "-1", "0" * 500, "null", "{}"]),
)
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
async def fuzz_server(settings) -> AsyncIterator[ServerProcess]:  # type: ignore[no-untyped-def]
    # A separate process: the fuzz tests use a blocking client.
    proc = await ServerProcess(
        settings.with_overrides(
            rate_turns_per_min=0.0,
            rate_user_per_min=0.0,
            rate_auth_failures_per_min=0.0,
            max_streams_per_user=0,
            rate_reports_per_hour=0.0,
        )
    ).start()
    try:
        yield proc
    finally:
        await proc.stop()


@pytest.fixture(scope="module")
def http(fuzz_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.url, timeout=20) as c:
        yield c


@pytest.fixture(scope="module")
def token(http: httpx.Client) -> str:
    r = http.post(
        "/api/v1/auth/token",
        json={"user_id": f"fuzz-{uuid.uuid4().hex[:8]}", "leadership_type": "HLH"},
        headers={"X-API-Key": API_KEY},
    )
    assert r.status_code == 201
    return str(r.json()["access_token"])


@pytest.fixture(scope="module")
def operations(http: httpx.Client) -> list[tuple[str, str, dict[str, Any]]]:
    doc = http.get("/openapi.json").json()
    ops = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            ops.append((method, path, op))
    assert len(ops) >= 13
    return ops


def check(response: httpx.Response) -> None:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        assert response.status_code == 200
        return
    assert response.status_code < 500, (
        response.request.method,
        response.request.url,
        response.text[:300],
    )
    body = response.text
    assert "Traceback" not in body and 'File "' not in body
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith(
        "application/json"
    ):
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)


def fill(path: str, ident: str) -> str:
    from urllib.parse import quote

    parts = [quote(ident, safe="") if p.startswith("{") else p for p in path.split("/")]
    return "/".join(parts)


def call(http: httpx.Client, method: str, path: str, token: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "X-API-Key": API_KEY, **kw.pop("headers", {})}
    with http.stream(method.upper(), path, headers=headers, **kw) as r:
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            # Streams are read only as far as the first event; enough to see the status.
            for _ in r.iter_bytes():
                break
        else:
            r.read()
        return r


def test_openapi_document_lists_every_http_route(operations: list) -> None:
    paths = {p for _, p, _ in operations}
    assert "/api/v1/coaching/query/stream" in paths
    assert "/api/v1/conversations/{conversation_id}" in paths


@FUZZ
@given(data=st.data())
def test_arbitrary_json_bodies_never_cause_a_server_error(
    http: httpx.Client, token: str, operations: list, data: st.DataObject
) -> None:
    method, path, op = data.draw(st.sampled_from(operations))
    body = data.draw(JSON_VALUES)
    ident = data.draw(ID_TEXT)
    r = call(
        http,
        method,
        fill(path, ident),
        token,
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    check(r)


@FUZZ
@given(data=st.data())
def test_schema_shaped_bodies_with_wrong_values_never_cause_a_server_error(
    http: httpx.Client, token: str, operations: list, data: st.DataObject
) -> None:
    with_body = [o for o in operations if "requestBody" in o[2]]
    method, path, op = data.draw(st.sampled_from(with_body))
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    schema = http.get("/openapi.json").json()["components"]["schemas"][ref]
    keys = list(schema.get("properties", {}))
    body = data.draw(st.fixed_dictionaries({}, optional={k: JSON_VALUES for k in keys}))
    if "question" in keys and data.draw(st.booleans()):
        body["question"] = data.draw(st.text(min_size=1, max_size=50))
    r = call(
        http,
        method,
        fill(path, str(uuid.uuid4())),
        token,
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    check(r)


@FUZZ
@given(raw=st.binary(max_size=300), data=st.data())
def test_raw_bytes_and_invalid_utf8_never_cause_a_server_error(
    http: httpx.Client, token: str, operations: list, raw: bytes, data: st.DataObject
) -> None:
    method, path, _ = data.draw(st.sampled_from([o for o in operations if o[0] == "post"]))
    r = call(
        http,
        method,
        fill(path, str(uuid.uuid4())),
        token,
        content=raw,
        headers={"Content-Type": "application/json"},
    )
    check(r)


@FUZZ
@given(limit=st.text(max_size=12), cursor=st.text(max_size=40), ident=ID_TEXT)
def test_query_parameters_never_cause_a_server_error(
    http: httpx.Client, token: str, limit: str, cursor: str, ident: str
) -> None:
    for path in ("/api/v1/conversations", fill("/api/v1/conversations/{id}", ident)):
        check(call(http, "get", path, token, params={"limit": limit, "cursor": cursor}))
    r = call(
        http,
        "get",
        f"/api/v1/coaching/streams/{uuid.uuid4()}",
        token,
        headers={"Last-Event-ID": "".join(c for c in limit if 32 < ord(c) < 127) or "x"},
    )
    check(r)


# Text with a NUL somewhere: Postgres `text` cannot hold it, so it must be refused by name.
NUL_TEXT = st.tuples(st.text(max_size=20), st.text(max_size=20)).map(lambda p: f"{p[0]}\x00{p[1]}")
STORED_TEXT = st.sampled_from(
    [
        ("/api/v1/conversations", "title", {}),
        ("/api/v1/coaching/query", "client_message_id", {"question": "질문"}),
        ("/api/v1/auth/token", "email", {"user_id": "fuzz-nul"}),
    ]
)
UTC_OFFSETS = st.timedeltas(
    min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
)
CURSOR_TIMES = st.datetimes(timezones=st.none() | st.builds(timezone, UTC_OFFSETS))


@FUZZ
@given(text=NUL_TEXT, target=STORED_TEXT)
def test_nul_characters_in_stored_text_are_422_naming_the_field(
    http: httpx.Client, token: str, text: str, target: tuple[str, str, dict[str, Any]]
) -> None:
    path, field, body = target
    r = call(
        http,
        "post",
        path,
        token,
        content=json.dumps({**body, field: text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    check(r)
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text


@pytest.fixture(scope="module")
def conversation_id(http: httpx.Client, token: str) -> str:
    r = call(http, "post", "/api/v1/conversations", token, json={"title": "fuzz"})
    assert r.status_code == 201
    return str(r.json()["id"])


@FUZZ
@given(stamp=CURSOR_TIMES, seq=st.integers())
def test_cursors_of_any_time_or_size_are_a_page_or_a_400(
    http: httpx.Client, token: str, conversation_id: str, stamp: Any, seq: int
) -> None:
    raw = f"{stamp.isoformat()}|{uuid.uuid4()}".encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    r = call(http, "get", "/api/v1/conversations", token, params={"cursor": cursor})
    check(r)
    assert r.status_code in (200, 400), r.text
    r = call(http, "get", f"/api/v1/conversations/{conversation_id}", token, params={"cursor": seq})
    check(r)
    assert r.status_code in (200, 400), r.text
    assert (r.status_code == 200) == (0 <= seq < 2**63), (seq, r.text)


SCORE = st.floats(min_value=1.0, max_value=6.0)
DIMENSIONS = ("공유", "상호작용", "성장")


@FUZZ
@given(
    scores=st.tuples(SCORE, SCORE, SCORE),
    nudges=st.tuples(*[st.floats(min_value=-0.04, max_value=0.04)] * 3),
)
def test_report_scores_that_round_alike_on_the_same_side_of_high_share_a_report(
    http: httpx.Client, token: str, scores: tuple[float, ...], nudges: tuple[float, ...]
) -> None:
    nearby = tuple(min(6.0, max(1.0, round(s, 1) + n)) for s, n in zip(scores, nudges, strict=True))
    for a, b in zip(scores, nearby, strict=True):
        assume(round(a, 1) == round(b, 1) and (a >= 4.5) == (b >= 4.5))
    first, second = (
        call(
            http,
            "post",
            "/api/v1/coaching/interpretation",
            token,
            json={"assessment": dict(zip(DIMENSIONS, values, strict=True))},
        )
        for values in (scores, nearby)
    )
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert second.json()["report_id"] == first.json()["report_id"]
    assert second.json()["cached"] is True


@FUZZ
@given(header=st.text(max_size=200))
def test_arbitrary_authorization_headers_are_401(http: httpx.Client, header: str) -> None:
    try:
        r = http.get("/api/v1/conversations", headers={"Authorization": header})
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        return
    if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in header):
        # The HTTP parser refuses control characters in a header before the app runs.
        assert r.status_code in (400, 401)
        return
    assert r.status_code == 401
    check(r)


def test_very_long_and_deeply_nested_json(http: httpx.Client, token: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    r = call(http, "post", "/api/v1/conversations", token, content=deep)
    assert r.status_code == 413
    deep = b'{"title":' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = call(http, "post", "/api/v1/conversations", token, content=deep)
    assert r.status_code in (400, 422)
    check(r)
    long_q = json.dumps({"question": "가" * 20000}).encode()
    r = call(http, "post", "/api/v1/coaching/query", token, content=long_q)
    assert r.status_code in (413, 422)


def test_header_injection_through_request_id_is_neutralised(fuzz_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", fuzz_server.port), timeout=5) as s:
        s.sendall(
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\x0bSet-Cookie: evil=1\r\n"
            b"Connection: close\r\n\r\n"
        )
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    head = reply.split(b"\r\n\r\n")[0].lower()
    assert b"set-cookie" not in head
    assert reply.startswith(b"HTTP/1.1 ")


def test_log_injection_through_user_ids_is_refused(http: httpx.Client) -> None:
    r = http.post(
        "/api/v1/auth/token",
        json={"user_id": 'u1\n{"level":"error"}'},
        headers={"X-API-Key": API_KEY},
    )
    assert r.status_code == 422


@pytest.fixture(scope="module")
def ws_conn(fuzz_server: ServerProcess, token: str) -> Iterator[Any]:
    from websockets.sync.client import connect

    url = fuzz_server.url.replace("http://", "ws://") + "/api/v1/coaching/ws"
    with connect(url, subprotocols=["bearer", token], open_timeout=10) as ws:  # type: ignore[list-item]
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        yield ws


FRAME_TYPES = st.sampled_from(["question", "cancel", "resume", "ping", "auth", "x", "", None, 5])


@FUZZ
@given(
    frame=st.one_of(
        st.text(max_size=200),
        JSON_VALUES.map(json.dumps),
        st.fixed_dictionaries(
            {"type": FRAME_TYPES},
            optional={
                "question": JSON_VALUES,
                "message_id": ID_TEXT | JSON_VALUES,
                "last_event_id": JSON_VALUES,
                "conversation_id": ID_TEXT,
            },
        ).map(json.dumps),
    )
)
def test_websocket_frame_fuzzing_gets_answers_and_keeps_the_socket(
    ws_conn: Any, frame: str
) -> None:
    ws_conn.send(frame)
    # Every frame gets at least one reply; a question may also start a stream, whose
    # frames are drained until the reply to our marker ping arrives.
    ws_conn.send(json.dumps({"type": "ping", "t": "marker"}))
    for _ in range(500):
        reply = json.loads(ws_conn.recv(timeout=10))
        assert reply["type"] in {"error", "pong", "meta", "delta", "done", "cancel_ack"}, reply
        if reply["type"] == "error":
            assert isinstance(reply["code"], str) and "Traceback" not in reply["message"]
        if reply == {"type": "pong", "t": "marker"}:
            break
    else:
        pytest.fail("no pong after the fuzzed frame")
