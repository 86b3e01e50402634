"""The application factory and its one lifespan.

Every pool and client is opened in the lifespan and handed to handlers as state
(`request.state.db`, `.redis`, ...); nothing is created at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
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
from .db.migrate import apply_migrations
from .db.pool import create_pool
from .db.repositories import conversations as conversations_repo
from .embedded.postgres import EmbeddedPostgres
from .embedded.redis import EmbeddedRedis
from .errors import AppError
from .llm.base import LLMProvider
from .llm.offline import OfflineProvider
from .metrics import Metrics
from .services.admission import Admission
from .services.apilog import ApiLogWriter
from .services.auth import TokenService
from .services.chat import ChatService
from .services.persist import PartialWriter
from .services.ratelimit import Limit, RateLimiter
from .services.recovery import StreamSweeper
from .services.reports import ReportService, load_classifier
from .services.streams import StreamHub
from .tracing import open_tracer_provider

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


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings, *, tracer_provider: Any = None
) -> AsyncIterator[dict[str, Any]]:
    """Open every backing service; used by the app lifespan and by the CLI.

    `tracer_provider` is an OpenTelemetry tracer provider (tests pass one with an
    in-memory exporter); without one, `OTEL_ENABLED` decides (`tracing.py`)."""
    async with contextlib.AsyncExitStack() as stack:
        if tracer_provider is None:
            tracer_provider = open_tracer_provider(settings)
            if tracer_provider is not None:
                stack.callback(tracer_provider.shutdown)
        tracer = (
            tracer_provider.get_tracer("linkcoach_stream") if tracer_provider is not None else None
        )
        dsn = settings.database_url
        embedded_pg = dsn is None
        if dsn is None:
            pg = EmbeddedPostgres(settings.data_dir / "postgres")
            dsn = pg.start()
            stack.callback(pg.stop)
        pool = await create_pool(dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
        stack.push_async_callback(pool.close)
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            # A single embedded process owns every row. Elsewhere rows idle for longer than
            # any generation can run belong to a dead writer even without Redis; the
            # sweep below finds the others by their expired lease.
            stale_after = 0.0 if embedded_pg else settings.llm_total_timeout_s + 30
            fixed = await conversations_repo.interrupt_stale_streaming(
                conn, older_than_s=stale_after
            )
            if fixed:
                log.warning("stale streaming messages marked interrupted", extra={"count": fixed})

        redis_url = settings.redis_url
        if redis_url is None:
            embedded_redis = EmbeddedRedis(settings.data_dir / "redis")
            redis_url = embedded_redis.start()
            stack.callback(embedded_redis.stop)
        redis = aioredis.from_url(
            redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
        )
        stack.push_async_callback(redis.aclose)

        apilog = ApiLogWriter(
            pool,
            max_queue=settings.api_log_queue_size,
            batch_size=settings.api_log_batch_size,
            flush_interval_s=settings.api_log_flush_interval_s,
        )
        await apilog.start()
        stack.push_async_callback(apilog.stop)

        metrics = Metrics()
        admission = Admission(
            max_active=settings.max_active_streams,
            high_water=settings.ready_high_water,
            retry_after_s=settings.busy_retry_after_s,
            metrics=metrics,
        )
        provider = open_provider(settings)
        stack.push_async_callback(provider.aclose)
        retriever = await open_retrieval(settings)
        if retriever is not None:
            stack.push_async_callback(retriever.close)

        partials = PartialWriter(pool, interval_s=settings.persist_interval_s)
        await partials.start()
        stack.push_async_callback(partials.stop)
        hub = StreamHub(
            redis,
            prefix=settings.redis_prefix,
            ttl_s=settings.stream_buffer_ttl_s,
            max_events=settings.stream_buffer_max_events,
            lease_ttl_s=settings.stream_lease_ttl_s,
        )
        await hub.start()
        stack.push_async_callback(hub.stop, settings.shutdown_grace_s)
        sweeper = StreamSweeper(pool, hub, interval_s=settings.stream_sweep_interval_s)
        await sweeper.start()
        stack.push_async_callback(sweeper.stop)
        limiter = RateLimiter(
            redis,
            prefix=settings.redis_prefix,
            limits=rate_limits(settings),
            max_streams_per_user=settings.max_streams_per_user,
            stream_lease_s=settings.llm_total_timeout_s + 30,
            metrics=metrics,
        )
        chat = ChatService(
            settings=settings,
            pool=pool,
            hub=hub,
            provider=provider,
            retriever=retriever,
            partials=partials,
            metrics=metrics,
            limiter=limiter,
            admission=admission,
            tracer=tracer,
        )
        report_service = ReportService(
            settings=settings,
            pool=pool,
            redis=redis,
            provider=provider,
            retriever=retriever,
            metrics=metrics,
            limiter=limiter,
            classifier=await load_classifier(settings.models_dir / "leadership_classifier.skops"),
        )
        stack.push_async_callback(report_service.aclose)
        yield {
            "settings": settings,
            "db": pool,
            "redis": redis,
            "apilog": apilog,
            "tokens": TokenService(settings),
            "metrics": metrics,
            "provider": provider,
            "retriever": retriever,
            "hub": hub,
            "chat": chat,
            "limiter": limiter,
            "reports": report_service,
            "admission": admission,
            "tracer": tracer,
        }


def rate_limits(settings: Settings) -> dict[str, Limit]:
    def limit(per_minute: float, burst: int) -> Limit:
        return Limit(per_minute, max(1, burst))

    return {
        "user": limit(settings.rate_user_per_min, int(settings.rate_user_per_min / 6)),
        "turns": limit(settings.rate_turns_per_min, 10),
        "mint": limit(settings.rate_mint_per_min, int(settings.rate_mint_per_min / 6)),
        "refresh": limit(settings.rate_refresh_per_min, 20),
        "auth_failures": limit(settings.rate_auth_failures_per_min, 10),
        # The whole hour's budget may be spent at once (a leader trying several inputs),
        # then it refills evenly.
        "reports": limit(settings.rate_reports_per_hour / 60, int(settings.rate_reports_per_hour)),
    }


def init_sentry() -> None:
    dsn = os.environ.get("SENTRY_DSN")
    if not dsn:
        return
    try:
        import sentry_sdk
    except ImportError:
        log.warning("SENTRY_DSN is set but sentry-sdk is not installed (pip install sentry-sdk)")
        return
    sentry_sdk.init(dsn=dsn, traces_sample_rate=0.0, send_default_pii=False)


def open_provider(settings: Settings) -> LLMProvider:
    if settings.provider_name == "gemini":
        from .llm.gemini import GeminiProvider

        return GeminiProvider(settings)
    return OfflineProvider()


async def open_retrieval(settings: Settings) -> Any:
    """The knowledge-base retriever, or None when retrieval is switched off."""
    if not settings.retrieval_enabled:
        return None
    from .rag.ranking import RankConfig
    from .rag.retriever import open_retriever

    # The server sheds query embeddings under load; offline tools (ingest, eval) never do.
    lag_ms = settings.rag_embed_max_loop_lag_ms
    return await open_retriever(
        settings,
        config=RankConfig(dense_weight=settings.rag_dense_weight),
        embed_cpu_share=settings.rag_embed_cpu_share,
        embed_max_loop_lag_s=lag_ms / 1000 if lag_ms > 0 else None,
    )


def create_app(settings: Settings | None = None, *, tracer_provider: Any = None) -> Starlette:
    settings = (settings or Settings.from_env()).validate()
    init_sentry()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with open_resources(settings, tracer_provider=tracer_provider) as state:
            log.info(
                "ready",
                extra={"provider": settings.provider_name, "env": settings.app_env},
            )
            yield state

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
        Middleware(ServerTimingMiddleware),
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Content-Type", "Authorization", "Last-Event-ID", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
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
