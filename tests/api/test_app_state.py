"""The lifespan yields one typed `AppState`; every handler reads it through `state_of`."""

from __future__ import annotations

import dataclasses
import re

import httpx
import pytest
from starlette.requests import Request

from linkcoach_stream.services.admission import Admission
from linkcoach_stream.services.ratelimit import RateLimiter
from linkcoach_stream.state import STATE_KEY, AppState, scope_state, state_of

from ..conftest import ROOT, RunningServer, state_in

API = ROOT / "linkcoach_stream" / "api"
# What `request.state` still carries: this request's own values, not the app's.
PER_REQUEST = {"user_id", "error_code", "request_id"}


def test_the_lifespan_yields_one_typed_state_with_every_service(server: RunningServer) -> None:
    lifespan_state = server.server.lifespan.state  # type: ignore[attr-defined]
    assert set(lifespan_state) == {STATE_KEY}
    state = state_in(server)
    assert state.settings == server.settings
    assert isinstance(state.limiter, RateLimiter) and isinstance(state.admission, Admission)
    # Retrieval is off in the test settings and tracing is off: the only optional parts.
    missing = {f.name for f in dataclasses.fields(AppState) if getattr(state, f.name) is None}
    assert missing == {"retriever", "tracer"}


async def test_ready_reads_the_admission_of_the_typed_state(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    admission = state_in(server).admission
    slots = [admission.admit() for _ in range(admission.high_water_mark - admission.active)]
    try:
        overloaded = await client.get("/ready")
        assert overloaded.status_code == 503
        body = overloaded.json()["error"]
        assert body["code"] == "overloaded"
        assert body["max_active"] == server.settings.max_active_streams
        assert body["active"] == admission.active >= admission.high_water_mark
    finally:
        for slot in slots:
            slot.release()
    assert (await client.get("/ready")).status_code == 200


def test_state_of_without_a_lifespan_is_a_clear_error() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "state": {}})
    with pytest.raises(RuntimeError, match="lifespan did not run"):
        state_of(request)
    assert scope_state({"type": "http"}) is None
    # Something else under the key is not mistaken for the state.
    assert scope_state({"state": {STATE_KEY: object()}}) is None


def test_no_handler_reads_services_off_request_state_or_guesses_with_getattr() -> None:
    offenders = []
    for path in sorted(API.glob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name in re.findall(r"\b(?:request|conn|ws|websocket)\.state\.(\w+)", line):
                if name not in PER_REQUEST:
                    offenders.append(f"{path.name}:{number}: state.{name}")
            if re.search(r"getattr\(\s*\w+\.state\b", line):
                offenders.append(f"{path.name}:{number}: getattr on state")
    assert not offenders, "read the app's state through state_of():\n" + "\n".join(offenders)
