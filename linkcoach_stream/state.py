"""The application's state: one typed object opened by the lifespan, read by handlers.

The lifespan (`resources.open_app_state`) yields `{STATE_KEY: AppState(...)}`; Starlette
copies that mapping into every request's scope, so a handler reaches the pools and
services through `state_of(request)` (or `state_of(websocket)`) with their types, never
through untyped attributes. `request.state` keeps only what belongs to one request (its
id, the authenticated user id, the error code the API log records).

Every field is always present: a switched-off part is a null object (`NullLimiter`, an
`Admission` with no limit), except the retriever and the tracer, whose absence the
handlers report (`/ready` probes Chroma only when retrieval is on).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    import asyncpg
    import redis.asyncio as aioredis

    from .config import Settings
    from .llm.base import LLMProvider
    from .metrics import Metrics
    from .rag.retriever import Retriever
    from .services.admission import Admission
    from .services.apilog import ApiLogWriter
    from .services.auth import TokenService
    from .services.chat import ChatService
    from .services.ratelimit import Limiter
    from .services.reports import ReportService
    from .services.streams import StreamHub

STATE_KEY = "linkcoach"


@dataclass(frozen=True, slots=True)
class AppState:
    settings: Settings
    db: asyncpg.Pool
    redis: aioredis.Redis
    apilog: ApiLogWriter
    tokens: TokenService
    metrics: Metrics
    provider: LLMProvider
    retriever: Retriever | None
    hub: StreamHub
    chat: ChatService
    limiter: Limiter
    reports: ReportService
    admission: Admission
    # An OpenTelemetry tracer when tracing is on (`tracing.py`).
    tracer: Any = None

    def lifespan_state(self) -> dict[str, AppState]:
        """What the lifespan yields: Starlette hands it to every request's scope."""
        return {STATE_KEY: self}


def scope_state(scope: Mapping[str, Any]) -> AppState | None:
    """The state in an ASGI scope, or None when no lifespan ran (pure-ASGI middleware)."""
    state = (scope.get("state") or {}).get(STATE_KEY)
    return state if isinstance(state, AppState) else None


def state_of(conn: HTTPConnection) -> AppState:
    """The app's state for a request or WebSocket handler."""
    state = scope_state(conn.scope)
    if state is None:
        raise RuntimeError("the application state is missing: the lifespan did not run")
    return state
