"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..db.pool import ping as db_ping
from ..state import state_of
from .common import JSON


async def health(request: Request) -> JSON:
    return JSON({"status": "ok"})


async def _check(name: str, probe: Any, timeout: float = 2.0) -> tuple[str, str | None]:
    try:
        await asyncio.wait_for(probe(), timeout)
        return name, None
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return name, f"{type(exc).__name__}: {exc}"[:200]


async def ready(request: Request) -> JSON:
    state = state_of(request)
    admission = state.admission
    if admission.overloaded:
        # Answered before the probes: a load balancer polls this most when we are busiest.
        return JSON(
            {
                "status": "overloaded",
                "error": {
                    "code": "overloaded",
                    "message": "this instance is near its limit of answers at once",
                    "active": admission.active,
                    "high_water": admission.high_water_mark,
                    "max_active": admission.max_active,
                },
            },
            status_code=503,
            headers={"Retry-After": str(max(1, round(admission.retry_after())))},
        )

    async def pg() -> None:
        async with state.db.acquire(timeout=2) as conn:
            await db_ping(conn)

    async def redis() -> None:
        await state.redis.ping()

    probes = [("postgres", pg), ("redis", redis)]
    if state.retriever is not None:
        probes.append(("chroma", state.retriever.ping))
    results = await asyncio.gather(*(_check(n, p) for n, p in probes))
    checks = {name: ("ok" if err is None else "down") for name, err in results}
    down = [name for name, err in results if err is not None]
    if down:
        return JSON(
            {
                "status": "unavailable",
                "checks": checks,
                "error": {
                    "code": "not_ready",
                    "message": "backing service down: " + ", ".join(down),
                    "down": down,
                },
            },
            status_code=503,
        )
    return JSON({"status": "ready", "checks": checks})


async def metrics(request: Request) -> Response:
    state = state_of(request)
    state.metrics.api_log_dropped.set(state.apilog.dropped)
    state.metrics.stream_redis_failures.set(state.hub.redis_failures)
    retriever = state.retriever
    if retriever is not None:
        searches = state.metrics.retrieval_searches
        searches.labels("hybrid").set(retriever.hybrid_searches)
        searches.labels("lexical_shed").set(retriever.shed_searches)
        searches.labels("lexical").set(retriever.lexical_searches)
        for source, count in retriever.words_from.items():
            state.metrics.query_words.labels(source).set(count)
        queries = retriever.query_analyzer
        if queries is not None:
            state.metrics.query_analyses.labels("process").set(queries.remote)
            state.metrics.query_analyses.labels("inline").set(queries.inline)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


routes = [
    Route("/health", health, methods=["GET"], name="health"),
    Route("/ready", ready, methods=["GET"], name="ready"),
    Route("/metrics", metrics, methods=["GET"], name="metrics"),
]
