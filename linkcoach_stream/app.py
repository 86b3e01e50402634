"""The application factory and its one lifespan.

Every pool and client is opened in the lifespan (`resources.open_app_state`) and handed
to handlers as one typed `AppState` (`state.state_of(request)`); nothing is created at
import time.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount

from .api import (
    auth,
    coaching,
    conversations,
    health,
    messages,
    openapi,
    reports,
    usage,
    widget,
    ws,
)
from .api.common import JSON
from .api.middleware import RequestContextMiddleware
from .api.timing import ServerTimingMiddleware
from .config import Settings
from .errors import AppError
from .resources import open_app_state
from .state import AppState

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limited",
}


async def app_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    request.state.error_code = exc.code
    return JSON(exc.body(), status_code=exc.status, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = {
        404: "no route matches this path",
        405: "method not allowed on this path",
    }.get(exc.status_code, str(exc.detail))
    return JSON(
        {"error": {"code": code, "message": message}},
        status_code=exc.status_code,
        headers=dict(exc.headers or {}),
    )


async def unhandled_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc)
    return JSON(
        {"error": {"code": "internal_error", "message": "internal server error"}},
        status_code=500,
    )


def init_sentry(settings: Settings) -> None:
    if not settings.sentry_dsn:
        return
    try:
        import sentry_sdk
    except ImportError:
        log.warning("SENTRY_DSN is set but sentry-sdk is not installed (pip install sentry-sdk)")
        return
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        traces_sample_rate=settings.sentry_traces_sample_rate,
        send_default_pii=False,
    )


def tune_gc(settings: Settings) -> None:
    """Python's cyclic collector, set for a long-running server (`GC_THRESHOLDS`,
    `GC_FREEZE`). At 400 streams the collector took ~0.9 ms of CPU per turn with Python's
    thresholds (most of it full passes over the start-up objects: the index, the
    models), ~0.1 ms with these (`python benchmarks/streams.py`, see RESULTS.md)."""
    thresholds = settings.gc_threshold_values()
    if thresholds is not None:
        gc.set_threshold(*thresholds)
    if settings.gc_freeze:
        # Garbage of the start-up goes first; what survives is frozen.
        gc.collect()
        gc.freeze()


def create_app(settings: Settings | None = None, *, tracer_provider: Any = None) -> Starlette:
    settings = (settings or Settings.from_env()).validate()
    init_sentry(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, AppState]]:
        async with open_app_state(settings, tracer_provider=tracer_provider) as state:
            tune_gc(settings)
            log.info(
                "ready",
                extra={"provider": settings.provider_name, "env": settings.app_env},
            )
            yield state.lifespan_state()

    api_v1 = [
        *auth.routes,
        *conversations.routes,
        *coaching.routes,
        *messages.routes,
        *reports.routes,
        *usage.routes,
        *ws.routes,
    ]
    middleware = [
        Middleware(RequestContextMiddleware),
        Middleware(ServerTimingMiddleware, allow_origins=settings.cors_origins),
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Content-Type", "Authorization", "Last-Event-ID", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Server-Timing", "Retry-After"],
            max_age=600,
        ),
    ]
    return Starlette(
        routes=[
            *health.routes,
            *openapi.routes,
            *widget.routes,
            *coaching.legacy_routes,
            *reports.legacy_routes,
            Mount("/api/v1", routes=api_v1),
        ],
        middleware=middleware,
        exception_handlers={
            AppError: app_error,
            HTTPException: http_error,
            Exception: unhandled_error,
        },
        lifespan=lifespan,
    )
