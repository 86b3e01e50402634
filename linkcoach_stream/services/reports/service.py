"""`ReportService`: resolve the leader's type, then serve the report from cache or
generate it exactly once.

Flow of `ReportService.interpret`:

1. Validate the inputs and resolve what decides the type, with no I/O (`inputs`).
2. The two-tier cache (`cache`): Redis, then Postgres; a Postgres hit warms Redis.
3. Miss: one generation per (user, cache key) across every process (`singleflight`).
   A waiter that runs out of time gets a 503 `report_pending` with Retry-After. The
   result is written through to Postgres, then Redis.
4. Only the generation itself, found in neither tier, pays the user's hourly budget
   (`RATE_LIMIT_REPORTS_PER_HOUR`, a Redis token bucket shared by every process; 429
   `rate_limited` with Retry-After when spent). Cache hits, and requests that wait for
   another request's generation, are free.

Deliberate decisions (do not "fix"):

- `cached` is false only for the request that ran the generation; requests that waited
  for someone else's generation get `cached: true` and the same `report_id`.
- Without Redis there is no cross-process lock; two processes may then both generate,
  and the Postgres upsert (which never overwrites a fresh row) makes them converge on
  the first row written.
- Gemini writes the prose only. Follower compatibility scores are computed
  (`domain.compatibility`) and overwrite whatever the model returns, because the
  knowledge base gives qualitative guidance only and a model would invent numbers.
- An invalid model answer gets one repair call (the validation errors and the answer are
  sent back). If that fails too, or the provider fails, the report is composed offline
  from the knowledge base (`offline`), labelled provider "offline", and cached for
  `FALLBACK_TTL_S` only, so the next request after that tries the model again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import ValidationError
from redis.asyncio import Redis

from ...config import Settings
from ...db.repositories import reports as repo
from ...db.repositories import usage as usage_repo
from ...domain.compatibility import compatibility_scores
from ...domain.taxonomy import (
    BY_CODE,
    FOLLOWERSHIP_NAMES,
    FOLLOWERSHIP_TYPES,
    LeadershipType,
    code_from_scores,
)
from ...errors import RateLimited, ServiceUnavailable
from ...llm.base import LLMError, LLMProvider, PassageLike, Usage
from ...metrics import Metrics
from ...ml.model import LeadershipClassifier
from ...rag.protocol import Retrieval, sources_of
from ..auth import Principal
from ..ratelimit import Limiter, NullLimiter
from .cache import DB_DOWN, ReportCache, ReportResult, report_body
from .inputs import ReportInputs, report_scores, resolve_inputs
from .knowledge import ReportKnowledge
from .offline import OFFLINE_MODEL, compose_offline, dimension_order
from .prompt import REPORT_PROMPT_VERSION, repair_prompt, report_prompt, report_system
from .schema import REPORT_SCHEMA, Followership, GeneratedReport, Report
from .singleflight import SingleFlight, once_across_processes

log = logging.getLogger(__name__)

FALLBACK_TTL_S = 300
CLASSIFIER_FILENAME = "leadership_classifier.skops"


class InvalidReport(Exception):
    """The model's answer failed validation twice."""


@dataclass(frozen=True, slots=True)
class _Composed:
    report: Report
    sources: list[dict[str, Any]]
    provider: str
    model: str | None
    ttl: timedelta
    usage: Usage = field(default_factory=Usage)


async def load_classifier(path: Path) -> LeadershipClassifier | None:
    """The classifier artifact, loaded off the event loop; None (logged) when absent.

    A present but untrusted or mismatched artifact raises: refusing to start is the right
    answer to a model file that is not ours.
    """
    if not path.is_file():
        log.warning(
            "leadership classifier not found: raw answers will be scored by the 4.5 rule",
            extra={"path": str(path)},
        )
        return None
    classifier = await asyncio.to_thread(LeadershipClassifier.load, path)
    log.info("leadership classifier loaded", extra={"version": classifier.version})
    return classifier


class ReportService:
    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        redis: Redis,
        provider: LLMProvider,
        retriever: Retrieval | None,
        metrics: Metrics,
        limiter: Limiter | None = None,
        classifier: LeadershipClassifier | None = None,
        knowledge: ReportKnowledge | None = None,
    ) -> None:
        self.settings = settings
        self.limiter: Limiter = limiter if limiter is not None else NullLimiter()
        self.pool = pool
        self.redis = redis
        self.provider = provider
        self.retriever = retriever
        self.metrics = metrics
        self.classifier = classifier
        self.knowledge = knowledge or ReportKnowledge.load(settings.knowledge_base_dir)
        self.prompt_version = REPORT_PROMPT_VERSION
        self.kb_version = self._kb_version()
        self.generation_budget_s = settings.llm_total_timeout_s + 30
        self.wait_budget_s = self.generation_budget_s + 15
        self.cache = ReportCache(settings=settings, pool=pool, redis=redis, metrics=metrics)
        self._flights: SingleFlight[tuple[str, str], tuple[ReportResult, bool]] = SingleFlight()
        if classifier is None:
            self._classifier_id = "rule-4.5"
        else:
            self._classifier_id = str(classifier.metadata.get("sha256") or classifier.version)

    def _kb_version(self) -> str:
        """The retriever's version, else the files' (`knowledge.py` says why two)."""
        value = getattr(self.retriever, "kb_version", None) if self.retriever else None
        if callable(value):
            value = value()
        return value if isinstance(value, str) and value else self.knowledge.version

    async def aclose(self) -> None:
        await self._flights.aclose()

    # -- inputs -----------------------------------------------------------------------

    def resolve(
        self, user: Principal, *, leadership_type: str | None, assessment: object | None
    ) -> ReportInputs:
        return resolve_inputs(
            user,
            leadership_type=leadership_type,
            assessment=assessment,
            mask=self.settings.pii_masking,
            classifier_id=self._classifier_id,
            prompt_version=self.prompt_version,
            kb_version=self.kb_version,
            provider=f"{self.provider.name}/{self.provider.model}",
        )

    # -- reading ----------------------------------------------------------------------

    async def interpret(
        self, user: Principal, *, leadership_type: str | None, assessment: object | None
    ) -> ReportResult:
        inputs = self.resolve(user, leadership_type=leadership_type, assessment=assessment)
        found = await self.cache.lookup(inputs, count=True)
        if found is not None:
            return found
        (result, generated), leader = await self._flights.run(
            (inputs.user_id, inputs.cache_key), lambda: self._single_flight(inputs)
        )
        if leader and generated:
            return result
        return ReportResult(cached=True, data=result.data, raw=result.raw)

    async def get(self, user: Principal, report_id: uuid.UUID) -> dict[str, Any]:
        try:
            async with self.pool.acquire() as conn:
                row = await repo.get_report(conn, report_id=report_id, user_id=user.user_id)
        except DB_DOWN as exc:
            raise ServiceUnavailable("report storage is unavailable") from exc
        return {**report_body(row), "cached": True}

    # -- generating once --------------------------------------------------------------

    async def _single_flight(self, inputs: ReportInputs) -> tuple[ReportResult, bool]:
        """(result, whether this process generated it)."""

        async def lookup() -> tuple[ReportResult, bool] | None:
            found = await self.cache.lookup(inputs, count=False)
            return None if found is None else (found, False)

        async def peek() -> tuple[ReportResult, bool] | None:
            raw = await self.cache.hot_get(inputs, count=False)
            return None if raw is None else (ReportResult(cached=True, raw=raw), False)

        def pending() -> ServiceUnavailable:
            error = ServiceUnavailable(
                "this report is still being generated; retry shortly", code="report_pending"
            )
            error.headers["Retry-After"] = "2"
            return error

        return await once_across_processes(
            self.redis,
            self.cache.lock_key(inputs),
            work=lambda: self._generate(inputs),
            lookup=lookup,
            peek=peek,
            wait_s=self.wait_budget_s,
            pending=pending,
            redis_failed=self.cache.redis_failed,
        )

    async def _classify(
        self, inputs: ReportInputs
    ) -> tuple[str, float | None, dict[str, float] | None]:
        if inputs.code is not None:
            return inputs.code, None, None
        assert inputs.answers is not None and inputs.scores is not None
        if self.classifier is None:
            return code_from_scores(inputs.scores), None, None
        prediction = await asyncio.to_thread(self.classifier.predict, inputs.answers)
        all_scores = {c: round(p, 4) for c, p in prediction.all_scores.items()}
        return prediction.code, round(prediction.confidence, 4), all_scores

    async def _generate(self, inputs: ReportInputs) -> tuple[ReportResult, bool]:
        """(result, whether this call's report is the stored one); without the Redis lock
        another writer's fresh row may win, and then this one is discarded."""
        await self._charge(inputs)
        code, confidence, all_scores = await self._classify(inputs)
        leader = BY_CODE[code]
        scores = report_scores(inputs.scores)
        composed = await self._compose(leader, scores)
        try:
            async with self.pool.acquire() as conn:
                row, written = await repo.store_report(
                    conn,
                    report_id=uuid.uuid4(),
                    user_id=inputs.user_id,
                    cache_key=inputs.cache_key,
                    leadership_type=leader.name,
                    leadership_code=leader.code,
                    scores=scores,
                    confidence=confidence,
                    all_scores=all_scores,
                    report=composed.report.model_dump(),
                    sources=composed.sources,
                    provider=composed.provider,
                    model=composed.model,
                    prompt_version=self.prompt_version,
                    kb_version=self.kb_version,
                    ttl=composed.ttl,
                )
                await usage_repo.record_report(
                    conn,
                    user_id=inputs.user_id,
                    usage=composed.usage,
                    timezone=self.settings.usage_timezone,
                )
        except DB_DOWN as exc:
            raise ServiceUnavailable("report storage is unavailable") from exc
        data = report_body(row)
        await self.cache.hot_set(inputs, data)
        if not written:
            return ReportResult(cached=True, data=data), False
        log.info(
            "report generated",
            extra={
                "report_id": data["report_id"],
                "code": leader.code,
                "provider": composed.provider,
            },
        )
        return ReportResult(cached=False, data=data), True

    async def _charge(self, inputs: ReportInputs) -> None:
        """Take one generation from the user's hourly budget, or refuse with 429."""
        try:
            await self.limiter.hit("reports", inputs.user_id)
        except RateLimited as exc:
            raise RateLimited(
                f"at most {self.settings.rate_reports_per_hour:g} new reports per hour; "
                f"reports already generated are still served; retry in {exc.retry_after:.0f}s",
                retry_after=exc.retry_after,
            ) from None

    async def _compose(self, leader: LeadershipType, scores: dict[str, float] | None) -> _Composed:
        normal_ttl = timedelta(days=self.settings.report_ttl_days)
        if self.provider.name != "offline":
            try:
                async with asyncio.timeout(self.generation_budget_s):
                    return await self._compose_llm(leader, scores, normal_ttl)
            except LLMError as exc:
                kind = exc.kind
                if kind == "unsupported":
                    return self._offline(leader, scores, normal_ttl)
            except TimeoutError:
                kind = "total_timeout"
            except InvalidReport:
                kind = "invalid_report"
            self.metrics.llm_errors.labels(self.provider.name, kind).inc()
            self.metrics.degraded.labels("llm").inc()
            log.warning(
                "report generation failed; composed offline for a short while",
                extra={"kind": kind, "code": leader.code},
            )
            return self._offline(leader, scores, timedelta(seconds=FALLBACK_TTL_S))
        return self._offline(leader, scores, normal_ttl)

    def _offline(
        self, leader: LeadershipType, scores: dict[str, float] | None, ttl: timedelta
    ) -> _Composed:
        report, sources = compose_offline(self.knowledge, leader, scores)
        return _Composed(report, sources, "offline", OFFLINE_MODEL, ttl)

    async def _passages(
        self, leader: LeadershipType, scores: dict[str, float] | None
    ) -> list[PassageLike]:
        profile = self.knowledge.profiles.get(leader.code)
        pairing = self.knowledge.pairings.get(leader.code)
        focus = dimension_order(leader.code, scores)[0]
        if self.retriever is not None:
            try:
                found = await asyncio.gather(
                    self.retriever.search(
                        f"{leader.name} 리더 프로필 강점 리스크 코칭 포인트",
                        leadership_type=leader.code,
                        k=6,
                        categories=["leadership_types"],
                    ),
                    self.retriever.search(
                        f"{leader.name} 리더와 팔로워 유형별 협업",
                        leadership_type=leader.code,
                        k=6,
                        categories=["followership"],
                        followership_types=list(FOLLOWERSHIP_TYPES),
                    ),
                    self.retriever.search(
                        f"{focus} 차원 높음과 낮음, 개발 방법",
                        leadership_type=None,
                        k=3,
                        categories=["dimensions"],
                    ),
                )
                passages = [p for group in found for p in group]
                if passages:
                    return passages
            except Exception as exc:  # noqa: BLE001 - the files below are a full substitute
                self.metrics.degraded.labels("retrieval").inc()
                log.warning(
                    "retrieval failed for a report; using the knowledge-base files",
                    extra={"error": f"{type(exc).__name__}: {exc}"[:200]},
                )
        passages_kb: list[PassageLike] = []
        for doc in (profile, pairing):
            if doc is not None:
                passages_kb.extend(doc.passages())
        for doc in self.knowledge.dimensions.get(focus, [])[:1]:
            passages_kb.extend(doc.passages()[:3])
        return passages_kb

    async def _compose_llm(
        self, leader: LeadershipType, scores: dict[str, float] | None, ttl: timedelta
    ) -> _Composed:
        compat = compatibility_scores(leader.code, scores)
        passages = await self._passages(leader, scores)
        prompt = report_prompt(leader, scores, compat, passages)
        system = report_system(leader)
        spent = Usage()
        text = await self._generate_json(system, prompt, spent)
        try:
            generated = GeneratedReport.model_validate_json(text)
        except ValidationError as exc:
            self.metrics.llm_errors.labels(self.provider.name, "invalid_json").inc()
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '$'}: {e['msg']}" for e in exc.errors()[:8]
            )
            text = await self._generate_json(system, repair_prompt(prompt, problems, text), spent)
            try:
                generated = GeneratedReport.model_validate_json(text)
            except ValidationError as again:
                raise InvalidReport(str(again)[:300]) from again
        followers = generated.followership
        report = Report(
            summary=generated.summary,
            strengths=generated.strengths,
            improvements=generated.improvements,
            action_plan=generated.action_plan,
            followership=[
                Followership(
                    type=f,
                    name=FOLLOWERSHIP_NAMES[f],
                    score=compat[f],
                    **getattr(followers, f).model_dump(),
                )
                for f in FOLLOWERSHIP_TYPES
            ],
            risk_signals=generated.risk_signals,
        )
        sources = sources_of(passages)
        return _Composed(report, sources, self.provider.name, self.provider.model, ttl, spent)

    async def _generate_json(self, system: str, prompt: str, spent: Usage) -> str:
        text, usage = await self.provider.generate_json(
            system=system, prompt=prompt, schema=REPORT_SCHEMA
        )
        for kind, value in (
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("cached", usage.cached_tokens),
            ("thought", usage.thought_tokens),
        ):
            if value:
                self.metrics.tokens.labels(self.provider.name, kind).inc(value)
        # What every call of this report (a repair included) was billed.
        spent.prompt_tokens = (spent.prompt_tokens or 0) + (usage.prompt_tokens or 0)
        spent.completion_tokens = (spent.completion_tokens or 0) + (usage.completion_tokens or 0)
        spent.cached_tokens = (spent.cached_tokens or 0) + (usage.cached_tokens or 0)
        spent.thought_tokens = (spent.thought_tokens or 0) + (usage.thought_tokens or 0)
        return text
