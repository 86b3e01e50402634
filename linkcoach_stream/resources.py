"""Openers for the backing services, and the one composition the app lifespan uses.

Each opener is a small async context manager for one resource: it opens the real service
when its setting names one (`DATABASE_URL`, `REDIS_URL`, `CHROMA_HOST`, ...) or the
embedded default, and closes what it opened, in reverse order, when the block ends.
`open_app_state` composes them into the `AppState` the lifespan yields; a command that
needs one resource opens only that one (`linkcoach migrate` and `linkcoach token` open
Postgres and nothing else: no Redis, no Chroma, no e5, no classifier).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import redis.asyncio as aioredis

from .config import Settings
from .db.migrate import apply_migrations
from .db.pool import create_pool
from .db.repositories import conversations as conversations_repo
from .embedded.postgres import EmbeddedPostgres
from .embedded.redis import EmbeddedRedis
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
from .state import AppState
from .tracing import open_tracer_provider

if TYPE_CHECKING:
    from .ml.model import LeadershipClassifier
    from .rag.retriever import Retriever

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Database:
    pool: asyncpg.Pool
    # The embedded server belongs to this process alone (no other writer exists).
    embedded: bool


@contextlib.asynccontextmanager
async def open_postgres(settings: Settings) -> AsyncIterator[Database]:
    """A pool on `DATABASE_URL`, or on the embedded server started (and stopped) here."""
    async with contextlib.AsyncExitStack() as stack:
        dsn = settings.database_url
        embedded = dsn is None
        if dsn is None:
            pg = EmbeddedPostgres(settings.data_dir / "postgres")
            dsn = pg.start()
            stack.callback(pg.stop)
        # A smaller DB_POOL_MAX caps the default DB_POOL_MIN rather than refusing it.
        pool = await create_pool(
            dsn,
            min_size=min(settings.db_pool_min, settings.db_pool_max),
            max_size=settings.db_pool_max,
        )
        stack.push_async_callback(pool.close)
        yield Database(pool=pool, embedded=embedded)


async def prepare_database(database: Database, settings: Settings) -> None:
    """Apply migrations and mark the answers a dead writer left `streaming` (server start)."""
    async with database.pool.acquire() as conn:
        await apply_migrations(conn)
        # A single embedded process owns every row. Elsewhere rows idle for longer than
        # any generation can run belong to a dead writer even without Redis; the
        # sweep finds the others by their expired lease.
        stale_after = 0.0 if database.embedded else settings.llm_total_timeout_s + 30
        fixed = await conversations_repo.interrupt_stale_streaming(conn, older_than_s=stale_after)
        if fixed:
            log.warning("stale streaming messages marked interrupted", extra={"count": fixed})


@contextlib.asynccontextmanager
async def open_redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A client of `REDIS_URL`, or of the embedded server started (and stopped) here."""
    async with contextlib.AsyncExitStack() as stack:
        url = settings.redis_url
        if url is None:
            embedded = EmbeddedRedis(settings.data_dir / "redis")
            url = embedded.start()
            stack.callback(embedded.stop)
        client = aioredis.from_url(
            url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
        )
        stack.push_async_callback(client.aclose)
        yield client


@contextlib.asynccontextmanager
async def open_tracer(settings: Settings, *, tracer_provider: Any = None) -> AsyncIterator[Any]:
    """The service's OpenTelemetry tracer, or None when tracing is off.

    `tracer_provider` is one the caller owns (tests pass one with an in-memory exporter);
    without one, `OTEL_ENABLED` decides and the provider opened here is shut down here."""
    async with contextlib.AsyncExitStack() as stack:
        if tracer_provider is None:
            tracer_provider = open_tracer_provider(settings)
            if tracer_provider is not None:
                stack.callback(tracer_provider.shutdown)
        yield None if tracer_provider is None else tracer_provider.get_tracer("linkcoach_stream")


def open_provider(settings: Settings) -> LLMProvider:
    if settings.provider_name == "gemini":
        from .llm.gemini import GeminiProvider

        return GeminiProvider(settings)
    return OfflineProvider()


@contextlib.asynccontextmanager
async def open_llm(settings: Settings) -> AsyncIterator[LLMProvider]:
    provider = open_provider(settings)
    try:
        yield provider
    finally:
        await provider.aclose()


@contextlib.asynccontextmanager
async def open_retrieval(settings: Settings) -> AsyncIterator[Retriever | None]:
    """The knowledge-base retriever (Chroma and the embedder), or None when retrieval is
    switched off."""
    if not settings.retrieval_enabled:
        yield None
        return
    from .rag.ranking import RankConfig
    from .rag.retriever import open_retriever

    # The server sheds query embeddings under load; offline tools (ingest, eval) never do.
    lag_ms = settings.rag_embed_max_loop_lag_ms
    retriever = await open_retriever(
        settings,
        config=RankConfig(dense_weight=settings.rag_dense_weight),
        embed_cpu_share=settings.rag_embed_cpu_share,
        embed_max_loop_lag_s=lag_ms / 1000 if lag_ms > 0 else None,
        query_process=settings.rag_query_process,
        word_cache_size=settings.rag_word_cache,
    )
    try:
        yield retriever
    finally:
        await retriever.close()


@contextlib.asynccontextmanager
async def open_classifier(settings: Settings) -> AsyncIterator[LeadershipClassifier | None]:
    """The leadership classifier artifact in `MODELS_DIR`, or None when there is none."""
    yield await load_classifier(settings.models_dir / "leadership_classifier.skops")


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


@contextlib.asynccontextmanager
async def open_app_state(
    settings: Settings, *, tracer_provider: Any = None
) -> AsyncIterator[AppState]:
    """Every backing service and the services built on them, as the server runs them."""
    async with contextlib.AsyncExitStack() as stack:
        enter = stack.enter_async_context
        tracer = await enter(open_tracer(settings, tracer_provider=tracer_provider))
        database = await enter(open_postgres(settings))
        await prepare_database(database, settings)
        pool = database.pool
        redis = await enter(open_redis(settings))

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
        provider = await enter(open_llm(settings))
        retriever = await enter(open_retrieval(settings))

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
            classifier=await enter(open_classifier(settings)),
        )
        stack.push_async_callback(report_service.aclose)
        yield AppState(
            settings=settings,
            db=pool,
            redis=redis,
            apilog=apilog,
            tokens=TokenService(settings),
            metrics=metrics,
            provider=provider,
            retriever=retriever,
            hub=hub,
            chat=chat,
            limiter=limiter,
            reports=report_service,
            admission=admission,
            tracer=tracer,
        )
