"""ReportService directly: cache keys, Redis outages, the repair call and the fallback."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from linkcoach_stream.config import Settings
from linkcoach_stream.db.repositories import users
from linkcoach_stream.emulator.schema import value_for_schema
from linkcoach_stream.llm.base import LLMError, Usage
from linkcoach_stream.llm.offline import OfflineProvider
from linkcoach_stream.metrics import Metrics
from linkcoach_stream.services.auth import Principal
from linkcoach_stream.services.reports import FALLBACK_TTL_S, ReportService
from linkcoach_stream.services.reports import service as reports_module
from linkcoach_stream.services.reports.knowledge import ReportKnowledge
from linkcoach_stream.services.reports.schema import REPORT_SCHEMA
from tests.conftest import ROOT, free_port

KB = ReportKnowledge.load(ROOT / "knowledge_base")


class ScriptedProvider:
    """Answers generate_json from a script: JSON text, an exception, or "valid"."""

    name = "scripted"
    model = "scripted-1"

    def __init__(self, *answers: object, delay_s: float = 0.0) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.delay_s = delay_s

    async def generate_json(
        self, *, system: str, prompt: str, schema: dict[str, Any]
    ) -> tuple[str, Usage]:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        answer = self.answers.pop(0) if self.answers else "valid"
        if isinstance(answer, BaseException):
            raise answer
        if answer == "valid":
            answer = orjson.dumps(value_for_schema(schema, salt=prompt[:50])).decode()
        return str(answer), Usage(10, 20, 30)

    def stream(self, prompt: Any, result: Any) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


async def new_user(pool: asyncpg.Pool, leadership_type: str | None = "HHH") -> Principal:
    user_id = f"svc-{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn:
        await users.upsert_user(conn, user_id=user_id, email=None, leadership_type=leadership_type)
    return Principal(user_id, None, leadership_type, "jti", 0)


def service(
    settings: Settings,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    provider: Any = None,
    metrics: Metrics | None = None,
) -> ReportService:
    return ReportService(
        settings=settings,
        pool=pool,
        redis=redis,
        provider=provider or OfflineProvider(),
        retriever=None,
        metrics=metrics or Metrics(),
        knowledge=KB,
    )


async def test_a_new_prompt_version_misses_the_cache(
    settings: Settings,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = await new_user(pool)
    first = await service(settings, pool, redis_client).interpret(
        user, leadership_type="HLL", assessment=None
    )
    again = await service(settings, pool, redis_client).interpret(
        user, leadership_type="HLL", assessment=None
    )
    assert first.cached is False and again.cached is True
    monkeypatch.setattr(reports_module, "REPORT_PROMPT_VERSION", "report-test-next")
    fresh = service(settings, pool, redis_client)
    assert fresh.prompt_version == "report-test-next"
    bumped = await fresh.interpret(user, leadership_type="HLL", assessment=None)
    assert bumped.cached is False
    assert bumped.as_dict()["report_id"] != first.as_dict()["report_id"]
    assert bumped.as_dict()["prompt_version"] == "report-test-next"


async def test_a_new_knowledge_base_version_misses_the_cache(
    settings: Settings,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
) -> None:
    user = await new_user(pool)
    svc = service(settings, pool, redis_client)
    first = await svc.interpret(user, leadership_type="LHL", assessment=None)
    svc.kb_version = "files-edited"
    second = await svc.interpret(user, leadership_type="LHL", assessment=None)
    assert second.cached is False
    assert second.as_dict()["report_id"] != first.as_dict()["report_id"]


async def test_redis_down_serves_from_postgres_and_counts_degraded(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    metrics = Metrics()
    svc = service(settings, pool, dead, metrics=metrics)
    user = await new_user(pool)
    try:
        results = await asyncio.gather(
            *(svc.interpret(user, leadership_type="LLH", assessment=None) for _ in range(5))
        )
        assert sorted(r.cached for r in results) == [False] + [True] * 4
        assert len({r.as_dict()["report_id"] for r in results}) == 1
        later = await svc.interpret(user, leadership_type="LLH", assessment=None)
    finally:
        await dead.aclose()
    assert later.cached is True
    assert later.as_dict()["report_id"] == results[0].as_dict()["report_id"]
    assert metrics.degraded.labels("redis")._value.get() > 0
    assert metrics.cache.labels("postgres", "hit")._value.get() >= 1


async def test_concurrent_calls_share_one_generation(
    settings: Settings, pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    provider = ScriptedProvider(delay_s=0.2)
    svc = service(settings, pool, redis_client, provider)
    user = await new_user(pool)
    results = await asyncio.gather(
        *(svc.interpret(user, leadership_type="HHL", assessment=None) for _ in range(10))
    )
    assert provider.calls == 1
    assert sum(not r.cached for r in results) == 1
    assert results[0].as_dict()["provider"] == "scripted"


async def test_two_services_sharing_redis_generate_once(
    settings: Settings, pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    """Two instances (as two processes would be) coordinate through the Redis lock."""
    a, b = ScriptedProvider(delay_s=0.3), ScriptedProvider(delay_s=0.3)
    a.name = b.name = "scripted"
    svc_a = service(settings, pool, redis_client, a)
    svc_b = service(settings, pool, redis_client, b)
    user = await new_user(pool)
    results = await asyncio.gather(
        *(
            (svc_a if i % 2 else svc_b).interpret(user, leadership_type="LHH", assessment=None)
            for i in range(10)
        )
    )
    assert a.calls + b.calls == 1
    assert len({r.as_dict()["report_id"] for r in results}) == 1


async def test_an_invalid_answer_gets_one_repair_call(
    settings: Settings, pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    provider = ScriptedProvider('{"summary": "짧은 요약"}', "valid")
    svc = service(settings, pool, redis_client, provider)
    result = await svc.interpret(await new_user(pool), leadership_type="HLH", assessment=None)
    assert provider.calls == 2
    data = result.as_dict()
    assert data["provider"] == "scripted"
    assert len(data["report"]["followership"]) == 5


async def test_twice_invalid_or_failing_model_falls_back_to_offline_briefly(
    settings: Settings, pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    metrics = Metrics()
    for provider in (
        ScriptedProvider("not json", '{"summary": ""}'),
        ScriptedProvider(LLMError("quota", kind="rate_limited")),
    ):
        svc = service(settings, pool, redis_client, provider, metrics=metrics)
        result = await svc.interpret(await new_user(pool), leadership_type="LLL", assessment=None)
        data = result.as_dict()
        assert data["provider"] == "offline"
        assert data["report"]["summary"].startswith("[오프라인 리포트]")
        lifetime = (data["expires_at"] - data["created_at"]).total_seconds()
        assert lifetime == pytest.approx(FALLBACK_TTL_S, abs=2)
    assert metrics.degraded.labels("llm")._value.get() == 2


def test_the_schema_sent_to_the_model_is_what_the_validator_accepts() -> None:
    from linkcoach_stream.services.reports.schema import GeneratedReport

    for salt in ("a", "b", "c"):
        GeneratedReport.model_validate(value_for_schema(REPORT_SCHEMA, salt=salt))
