"""The one-shot leadership report: resolve the leader's type, then serve the report from
cache or generate it exactly once.

Flow of `ReportService.interpret`:

1. Validate the inputs and resolve what decides the type, with no I/O. Precedence: raw
   item answers (the classifier, at generation time), else dimension scores (the >= 4.5
   rule), else the request's `leadership_type`, else the token's; none is a 422.
2. Redis (hot tier): `GET {prefix}report:{user}:{cache_key}`. The stored value is the
   finished response body with `"cached": true`, so a hit is one GET and no JSON work.
3. Postgres (durable tier): the user's unexpired row with that cache key; a hit warms
   Redis.
4. Miss: one generation per (user, cache key) across every process. Within a process
   the first request starts a task and later ones await the same task; across processes
   the task takes a Redis lock (`SET NX PX` with a random token, kept alive by a heartbeat,
   released by compare-and-delete) and the others poll the hot key until the report lands,
   the lock frees up (a waiter then takes it over), or the wait bound passes (503 with
   Retry-After). The result is written through to Postgres, then Redis.
5. Only the generation itself, found in neither tier, pays the user's hourly budget
   (`RATE_LIMIT_REPORTS_PER_HOUR`, a Redis token bucket shared by every process; 429
   `rate_limited` with Retry-After when spent). Cache hits, and requests that wait for
   another request's generation, are free.

Deliberate decisions (do not "fix"):

- The cache key hashes what decides the report: the type code, or the raw inputs that
  decide it (answers + classifier identity, or scores), the report prompt version, the
  knowledge-base version and the provider/model. The provider is in the key so a report
  composed offline is never served as a Gemini one, nor the reverse. Answers are keyed
  as given and classified only on a miss, so a cache hit never runs the classifier.
- Scores are keyed at one decimal (`report_scores`), the precision the report is
  written from: the type comes from the exact scores (the >= 4.5 rule, so 4.46 and 4.54
  stay two types and two keys), and everything else the report says (the score line, the
  order of dimensions to work on, the compatibility scores) is computed from the scores
  rounded to one decimal, which are also what is stored and returned. Scores 4.81 and
  4.84 are one report and one LLM call; keyed at four decimals they were two.
- `cached` is false only for the request that ran the generation; requests that waited
  for someone else's generation get `cached: true` and the same `report_id`.
- Redis is an accelerator, never a dependency: every Redis failure is logged (at most
  every few seconds), counted in `linkcoach_degraded_total{service="redis"}` and skipped.
  Without Redis there is no cross-process lock; two processes may then both generate,
  and the Postgres upsert (which never overwrites a fresh row) makes them converge on
  the first row written.
- Waiting is polling, not pub/sub: a waiter needs the result even if it subscribed after
  the publish, and polling the key it would read anyway has no such race. The interval
  backs off from 20 ms to 250 ms; only one request per process polls (the rest await its
  task).
- Generation runs in its own task, shielded from the requests awaiting it: a client that
  disconnects does not cancel the report the others are waiting for.
- Gemini writes the prose only. Follower compatibility scores are computed here
  (`compatibility_scores`) and overwrite whatever the model returns, because the
  knowledge base gives qualitative guidance only and a model would invent numbers.
  The model returns followership as an object keyed by follower type, so the schema
  itself guarantees one entry per type.
- An invalid model answer gets one repair call (the validation errors and the answer are
  sent back). If that fails too, or the provider fails, the report is composed offline
  from the knowledge base, labelled provider "offline", and cached for
  `FALLBACK_TTL_S` only, so the next request after that tries the model again.
- The offline composer is deterministic: it parses the type profile's `##` sections and
  the pairing guide's per-follower sections (`시너지: … 주의: … 함께 일하는 법: … 한마디: …`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Protocol

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..config import Settings
from ..db.repositories import reports as repo
from ..db.repositories import usage as usage_repo
from ..domain.assessment_items import ITEM_IDS
from ..domain.taxonomy import (
    BY_CODE,
    DIMENSION_DESCRIPTIONS,
    DIMENSIONS,
    FOLLOWERSHIP_NAMES,
    FOLLOWERSHIP_TYPES,
    SCORE_MAX,
    SCORE_MIN,
    LeadershipType,
    code_from_scores,
    resolve_type,
)
from ..errors import RateLimited, ServiceUnavailable, ValidationFailed
from ..llm.base import LLMError, LLMProvider, PassageLike, Usage
from ..llm.prompts import context_block, type_context
from ..metrics import Metrics
from ..ml.model import LeadershipClassifier, scores_from_answers
from .auth import Principal
from .pii import mask_pii, mask_tree
from .ratelimit import Limiter, NullLimiter

log = logging.getLogger(__name__)

# Bump when the offline composer's output changes; the hash below covers the prompt text
# and the schema, so editing either changes the version (and the cache key) by itself.
_COMPOSER_REVISION = "1"
OFFLINE_LABEL = "[오프라인 리포트] "
OFFLINE_MODEL = "offline-report-composer-1"
FALLBACK_TTL_S = 300
REPORT_SCORE_DECIMALS = 1
LOCK_TTL_MS = 15_000
_HEARTBEAT_S = LOCK_TTL_MS / 1000 / 3
_POLL_MIN_S = 0.02
_POLL_MAX_S = 0.25
_REDIS_LOG_EVERY_S = 10.0
ANSWER_MIN, ANSWER_MAX = 1, 6
CLASSIFIER_FILENAME = "leadership_classifier.skops"

_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
_EXTEND = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_DB_DOWN = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError)


# --------------------------------------------------------------------------- the report


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Strength(_Model):
    title: Text
    description: Text


class Improvement(_Model):
    title: Text
    description: Text
    action: Text


class ActionPlan(_Model):
    immediate: Text
    short_term: Text
    long_term: Text


class FollowerAdvice(_Model):
    synergy: Text
    caution: Text
    how_to_work_together: Text


class FollowerAdviceByType(_Model):
    driver: FollowerAdvice
    thinker: FollowerAdvice
    supporter: FollowerAdvice
    doer: FollowerAdvice
    follower: FollowerAdvice


class RiskSignal(_Model):
    signal: Text
    action: Text


class GeneratedReport(_Model):
    """What the model is asked for (see `REPORT_SCHEMA`)."""

    summary: Text
    strengths: list[Strength] = Field(min_length=3, max_length=3)
    improvements: list[Improvement] = Field(min_length=2, max_length=2)
    action_plan: ActionPlan
    followership: FollowerAdviceByType
    risk_signals: list[RiskSignal] = Field(min_length=1, max_length=6)


class Followership(_Model):
    type: Text  # driver, thinker, supporter, doer, follower
    name: Text  # 주도형(Driver), ...
    score: int = Field(ge=0, le=100)  # computed by `compatibility_scores`, never generated
    synergy: Text
    caution: Text
    how_to_work_together: Text


class Report(_Model):
    """The report as stored and returned (`report` in the response)."""

    summary: Text
    strengths: list[Strength] = Field(min_length=3, max_length=3)
    improvements: list[Improvement] = Field(min_length=2, max_length=2)
    action_plan: ActionPlan
    followership: list[Followership] = Field(min_length=5, max_length=5)
    risk_signals: list[RiskSignal] = Field(min_length=1, max_length=6)


def _text(max_length: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length}


def _object(props: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "propertyOrdering": list(props),
    }


def _array(item: dict[str, Any], low: int, high: int) -> dict[str, Any]:
    return {"type": "array", "items": item, "minItems": low, "maxItems": high}


_FOLLOWER_ADVICE = _object(
    {"synergy": _text(300), "caution": _text(300), "how_to_work_together": _text(400)}
)
REPORT_SCHEMA: dict[str, Any] = _object(
    {
        "summary": _text(600),
        "strengths": _array(_object({"title": _text(40), "description": _text(300)}), 3, 3),
        "improvements": _array(
            _object({"title": _text(40), "description": _text(300), "action": _text(300)}), 2, 2
        ),
        "action_plan": _object(
            {"immediate": _text(300), "short_term": _text(300), "long_term": _text(300)}
        ),
        "followership": _object({t: _FOLLOWER_ADVICE for t in FOLLOWERSHIP_TYPES}),
        "risk_signals": _array(_object({"signal": _text(200), "action": _text(300)}), 3, 4),
    }
)

REPORT_SYSTEM = """당신은 링크코치의 리더십 코치 "그라운더"입니다.
지금은 대화가 아니라, 리더십 진단을 받은 리더에게 건네는 해석 리포트를 작성합니다.
- 따뜻하고 전문적이며 실용적인 한국어 존댓말(합니다/하세요체)로 씁니다.
- 한국 직장 상황(보고 문화, 직급, 재택/하이브리드, 연말 평가 등)에 맞는 구체적인 예시를 씁니다.
- 리더의 유형과 세 차원(공유·상호작용·성장) 점수, 그리고 제공된 참고 자료를 근거로 씁니다.
  자료에 없는 내용을 지어내지 말고, 일반적인 코칭 원칙은 그렇다고 밝힙니다.
- 주어진 JSON 스키마에 맞는 JSON 객체 하나만 출력합니다. 다른 텍스트는 쓰지 않습니다.
- summary: 유형의 핵심과 점수의 의미를 3~4문장으로.
- strengths: 이 리더의 강점 3개(title은 짧은 명사구, description은 1~2문장).
- improvements: 개선점 2개(description은 왜 중요한지, action은 이번 주에 할 수 있는 구체적 행동).
- action_plan: immediate(이번 주), short_term(1~3개월), long_term(6~12개월) 각각 구체적 행동.
- followership: 주도형(driver)·사고형(thinker)·지원형(supporter)·실행형(doer)·순응형(follower)
  팀원 각각과의 시너지, 주의할 점, 함께 일하는 법(대화 예시 한 문장 포함).
- risk_signals: 리더가 스스로 관찰할 수 있는 위험 신호 3~4개와 각각의 대응 행동."""

REPORT_PROMPT_VERSION = (
    "report-"
    + hashlib.sha256(
        (REPORT_SYSTEM + orjson.dumps(REPORT_SCHEMA).decode() + _COMPOSER_REVISION).encode()
    ).hexdigest()[:12]
)

# What each follower type needs most from a leader, per dimension (weights sum to 1).
# A heuristic read from knowledge_base/followership/<type>.md: drivers want challenge and
# growth, thinkers context and reasons (공유), supporters relationship (상호작용), doers clear
# goals and roles (공유), followers a safe relationship and step-by-step growth.
_FOLLOWER_NEEDS: dict[str, dict[str, float]] = {
    "driver": {"공유": 0.3, "상호작용": 0.1, "성장": 0.6},
    "thinker": {"공유": 0.6, "상호작용": 0.1, "성장": 0.3},
    "supporter": {"공유": 0.2, "상호작용": 0.6, "성장": 0.2},
    "doer": {"공유": 0.5, "상호작용": 0.2, "성장": 0.3},
    "follower": {"공유": 0.2, "상호작용": 0.4, "성장": 0.4},
}


def compatibility_scores(code: str, scores: Mapping[str, float] | None) -> dict[str, int]:
    """0-100 per follower type: 40 + 55 x (need-weighted dimension level).

    A dimension's level is its score scaled to 0..1 when scores are known, else 0.8 for H
    and 0.35 for L. So the range is 40 (every need unmet) to 95 (every need met).
    """

    def level(i: int, dim: str) -> float:
        if scores is not None:
            return (scores[dim] - SCORE_MIN) / (SCORE_MAX - SCORE_MIN)
        return 0.8 if code[i] == "H" else 0.35

    levels = {d: level(i, d) for i, d in enumerate(DIMENSIONS)}
    return {
        f: round(40 + 55 * sum(w * levels[d] for d, w in _FOLLOWER_NEEDS[f].items()))
        for f in FOLLOWERSHIP_TYPES
    }


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Assessment:
    answers: dict[str, int] | None = None
    scores: dict[str, float] | None = None


def _is_number(value: object) -> bool:
    # bool is an int subclass; `true` is not a score.
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_assessment(raw: object) -> Assessment:
    """Validate `assessment`; a ValidationFailed names the offending field."""
    if not isinstance(raw, dict):
        raise ValidationFailed(
            'assessment: must be an object of dimension scores or {"answers": {...}}',
            field="assessment",
        )
    if "answers" in raw:
        extra = sorted(str(k) for k in raw if k != "answers")
        if extra:
            raise ValidationFailed(
                f"assessment.{extra[0]}: not allowed next to answers",
                field=f"assessment.{extra[0]}",
            )
        return Assessment(answers=_parse_answers(raw["answers"]))
    if not raw:
        raise ValidationFailed(
            "assessment: must hold the scores 공유, 상호작용, 성장 or answers",
            field="assessment",
        )
    return Assessment(scores=_parse_scores(raw))


def _parse_answers(raw: object) -> dict[str, int]:
    where = "assessment.answers"
    if not isinstance(raw, dict):
        raise ValidationFailed(f"{where}: must be an object of item id to 1-6", field=where)
    unknown = sorted(str(k) for k in raw if k not in ITEM_IDS)
    if unknown:
        # A typo like "s1" would otherwise read as a missing S1 and hide the real cause.
        raise ValidationFailed(
            f"{where}.{unknown[0]}: unknown item (expected S1-S6, I1-I6, G1-G6)",
            field=f"{where}.{unknown[0]}",
        )
    answers: dict[str, int] = {}
    for item in ITEM_IDS:
        name = f"{where}.{item}"
        if item not in raw:
            raise ValidationFailed(f"{name}: missing (all 18 items are required)", field=name)
        value = raw[item]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValidationFailed(
                f"{name}: must be an integer {ANSWER_MIN}-{ANSWER_MAX}", field=name
            )
        if not ANSWER_MIN <= value <= ANSWER_MAX:
            raise ValidationFailed(
                f"{name}: must be between {ANSWER_MIN} and {ANSWER_MAX} (got {value})",
                field=name,
            )
        answers[item] = value
    return answers


def _parse_scores(raw: dict[Any, Any]) -> dict[str, float]:
    unknown = sorted(str(k) for k in raw if k not in DIMENSIONS)
    if unknown:
        raise ValidationFailed(
            f"assessment.{unknown[0]}: unknown dimension (expected 공유, 상호작용, 성장, "
            "or answers)",
            field=f"assessment.{unknown[0]}",
        )
    scores: dict[str, float] = {}
    for dim in DIMENSIONS:
        name = f"assessment.{dim}"
        if dim not in raw:
            raise ValidationFailed(f"{name}: missing", field=name)
        value = raw[dim]
        if not _is_number(value) or not math.isfinite(value):
            raise ValidationFailed(
                f"{name}: must be a number {SCORE_MIN:g}-{SCORE_MAX:g}", field=name
            )
        if not SCORE_MIN <= value <= SCORE_MAX:
            raise ValidationFailed(
                f"{name}: must be between {SCORE_MIN:g} and {SCORE_MAX:g} (got {value})",
                field=name,
            )
        scores[dim] = round(float(value), 4)
    return scores


def report_scores(scores: Mapping[str, float] | None) -> dict[str, float] | None:
    """The scores a report is written from and keyed by: one decimal, as the report shows
    them. The type is decided from the exact scores before this rounding."""
    if scores is None:
        return None
    return {d: round(v, REPORT_SCORE_DECIMALS) for d, v in scores.items()}


@dataclass(frozen=True, slots=True)
class ReportInputs:
    user_id: str
    cache_key: str
    code: str | None  # None when answers decide it (classified on a miss)
    scores: dict[str, float] | None  # exact; they decide the type by the 4.5 rule
    answers: dict[str, int] | None


# --------------------------------------------------------------------------- knowledge


@dataclass(slots=True)
class KBSection:
    """One `##` section of a knowledge-base file; satisfies `PassageLike`."""

    path: str
    title: str
    category: str
    section: str
    text: str


@dataclass(frozen=True, slots=True)
class KBDocument:
    path: str
    title: str
    category: str
    intro: str
    sections: tuple[tuple[str, str], ...]

    def find(self, *needles: str) -> str:
        for heading, body in self.sections:
            if all(n in heading for n in needles):
                return body
        return ""

    def passages(self) -> list[KBSection]:
        out = [KBSection(self.path, self.title, self.category, self.title, self.intro)]
        out += [KBSection(self.path, self.title, self.category, h, b) for h, b in self.sections]
        return [p for p in out if p.text]

    def source(self) -> dict[str, Any]:
        return {"path": self.path, "title": self.title, "category": self.category}


_H1 = re.compile(r"^#[ \t]+.*$", re.MULTILINE)
_H2 = re.compile(r"^##[ \t]+(.+?)[ \t]*$", re.MULTILINE)


def _parse_kb_file(root: Path, path: Path) -> KBDocument:
    from ..rag.documents import parse_document

    rel = path.relative_to(root).as_posix()
    doc = parse_document(path.read_text(encoding="utf-8"), rel)
    body = _H1.sub("", doc.body, count=1).strip()
    marks = list(_H2.finditer(body))
    intro = body[: marks[0].start()].strip() if marks else body
    sections = tuple(
        (
            m.group(1).strip(),
            body[m.end() : marks[i + 1].start() if i + 1 < len(marks) else None].strip(),
        )
        for i, m in enumerate(marks)
    )
    return KBDocument(rel, doc.title, doc.category, intro, sections)


def _slug(t: LeadershipType) -> str:
    return t.id.lower().replace("_", "-")


_DIMENSION_SLUGS = {"공유": "sharing", "상호작용": "interaction", "성장": "growth"}


@dataclass(slots=True)
class ReportKnowledge:
    """The knowledge-base files a report is built from, parsed once at start."""

    root: Path
    profiles: dict[str, KBDocument] = field(default_factory=dict)
    pairings: dict[str, KBDocument] = field(default_factory=dict)
    dimensions: dict[str, list[KBDocument]] = field(default_factory=dict)
    version: str = ""

    @classmethod
    def load(cls, root: Path) -> ReportKnowledge:
        kb = cls(root=root)
        digest = hashlib.sha256()
        files = sorted(root.rglob("*.md")) if root.is_dir() else []
        for path in files:
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
            digest.update(b"\0")
        kb.version = "files-" + digest.hexdigest()[:16]
        for t in BY_CODE.values():
            for target, rel in (
                (kb.profiles, f"leadership_types/{_slug(t)}.md"),
                (kb.pairings, f"followership/pairing-{_slug(t)}.md"),
            ):
                try:
                    target[t.code] = _parse_kb_file(root, root / rel)
                except (OSError, ValueError) as exc:
                    log.warning(
                        "knowledge-base file unusable for reports",
                        extra={"path": rel, "error": str(exc)},
                    )
        for dim, slug in _DIMENSION_SLUGS.items():
            docs = []
            for path in sorted((root / "dimensions").glob(f"{slug}-*.md")):
                try:
                    docs.append(_parse_kb_file(root, path))
                except (OSError, ValueError) as exc:
                    log.warning(
                        "knowledge-base file unusable for reports",
                        extra={"path": str(path), "error": str(exc)},
                    )
            kb.dimensions[dim] = docs
        return kb


# --------------------------------------------------------------------------- offline composer


_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_NUMBERED = re.compile(r"^\s*\d+\.\s+(.+)$", re.MULTILINE)
_BULLET = re.compile(r"^\s*[-*]\s+(.+)$", re.MULTILINE)
_GROWTH = re.compile(
    r"^\*\*(?P<dim>[^*—-]+?)\s*[—-]\s*(?P<head>[^*]+?)\*\*\s*(?P<body>.+)$", re.MULTILINE
)
_PAIRING = re.compile(
    r"^(?P<lead>.*?)시너지:\s*(?P<synergy>.*?)\s*주의:\s*(?P<caution>.*?)\s*"
    r"함께 일하는 법:\s*(?P<how>.*?)\s*(?:한마디:\s*(?P<say>.*))?$",
    re.DOTALL,
)
_CHECKLIST = re.compile(r"주의 신호 체크리스트:\s*(.+)")


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("**", "")).strip()


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(_plain(text)) if s.strip()]


_CONNECTIVE = re.compile(r"(?<=[해아어고며서워켜져와여면])\s")


def _headline(sentence: str) -> str:
    """A short title from a sentence: the sentence itself when short, else its first
    clause, else its first words (cut at a word boundary, never inside brackets)."""
    sentence = re.sub(r"\s*\([^)]*\)", "", sentence).strip().rstrip(".")
    if len(sentence) <= 36:
        return sentence
    clause = _CONNECTIVE.split(sentence, maxsplit=1)[0]
    if 8 <= len(clause) <= 30 and clause.count('"') % 2 == 0:
        return clause
    words: list[str] = []
    for word in sentence.split():
        if len(" ".join([*words, word])) > 28 or '"' in word or "'" in word:
            break
        words.append(word)
    return " ".join(words).rstrip(",") + "…"


def _title_and_description(text: str) -> tuple[str, str]:
    text = _plain(text)
    head, sep, rest = text.partition(": ")
    if sep and 2 <= len(head) <= 30 and rest:
        return head, rest
    sentences = _sentences(text)
    if len(sentences) >= 2:
        return _headline(sentences[0]), " ".join(sentences[1:])
    return _headline(text), text


def _bigrams(text: str) -> set[str]:
    s = re.sub(r"\s+", "", text)
    return {s[i : i + 2] for i in range(len(s) - 1)}


def _best_match(text: str, candidates: Sequence[str], used: set[int]) -> str:
    grams = _bigrams(text)
    ranked = sorted(
        range(len(candidates)),
        key=lambda i: (i in used, -len(grams & _bigrams(candidates[i])), i),
    )
    used.add(ranked[0])
    return candidates[ranked[0]]


def _generic_followers(t: LeadershipType) -> dict[str, dict[str, str]]:
    """Used only when the pairing guide is missing or malformed."""
    return {
        f: {
            "synergy": f"{t.name} 리더의 강점이 {FOLLOWERSHIP_NAMES[f]} 팀원의 동기와 맞닿는 "
            "지점을 찾아 역할을 맡겨 보세요.",
            "caution": f"{FOLLOWERSHIP_NAMES[f]} 팀원이 기대하는 관여 방식과 리더의 방식이 "
            "어긋나지 않는지 1on1에서 확인하세요.",
            "how_to_work_together": "기대하는 결과와 점검 주기를 팀원과 함께 정하고, "
            "한 달 뒤 서로 잘 맞았는지 돌아보세요.",
        }
        for f in FOLLOWERSHIP_TYPES
    }


def _score_line(scores: Mapping[str, float] | None) -> str:
    if scores is None:
        return ""
    dims = " · ".join(f"{d} {scores[d]:.1f}" for d in DIMENSIONS)
    return f"진단 점수는 {dims}점입니다(4.5점 이상이 높음)."


def _dimension_order(code: str, scores: Mapping[str, float] | None) -> list[str]:
    """Dimensions to work on first: low (L) before high, then the lower score."""
    return sorted(
        DIMENSIONS,
        key=lambda d: (
            code[DIMENSIONS.index(d)] == "H",
            scores[d] if scores is not None else 0.0,
            DIMENSIONS.index(d),
        ),
    )


def compose_offline(
    kb: ReportKnowledge, t: LeadershipType, scores: Mapping[str, float] | None
) -> tuple[Report, list[dict[str, Any]]]:
    """A complete report from the type profile and the pairing guide, deterministically."""
    profile = kb.profiles.get(t.code)
    pairing = kb.pairings.get(t.code)
    sources = [d.source() for d in (profile, pairing) if d is not None]

    def find(*needles: str) -> str:
        return profile.find(*needles) if profile is not None else ""

    compat = compatibility_scores(t.code, scores)

    # Summary: the profile's introduction without its "this document covers" sentence,
    # the scores, and the coaching section's guiding question.
    intro = [s for s in _sentences(profile.intro if profile else "") if "이 문서" not in s]
    coaching = find("코칭 포인트")
    coaching_lead = next(
        (_plain(p) for p in coaching.split("\n") if p.strip() and not _NUMBERED.match(p)), ""
    )
    summary_parts = intro[:3] or [f"{t.name}({t.code}) 리더입니다. {type_context(t.code)}"]
    summary_parts.append(_score_line(scores))
    if coaching_lead:
        summary_parts.append(coaching_lead)
    summary = OFFLINE_LABEL + " ".join(p for p in summary_parts if p)

    strength_items = _BULLET.findall(find("강점"))
    high_dims = [d for i, d in enumerate(DIMENSIONS) if t.code[i] == "H"] or list(DIMENSIONS)
    while len(strength_items) < 3:
        d = high_dims[len(strength_items) % len(high_dims)]
        strength_items.append(
            f"{d}의 잠재력: {DIMENSION_DESCRIPTIONS[d]} 영역에서 이미 해 온 일을 팀의 습관으로 "
            "만들 수 있는 토대가 있습니다."
        )
    strengths = [
        Strength(title=title, description=desc)
        for title, desc in map(_title_and_description, strength_items[:3])
    ]

    coaching_items = [_plain(x) for x in _NUMBERED.findall(coaching)]
    growth = {
        m["dim"].strip(): (m["head"].strip().rstrip("."), _sentences(m["body"]))
        for m in _GROWTH.finditer(find("차원별"))
    }
    improvements: list[Improvement] = []
    for dim in _dimension_order(t.code, scores):
        head, sentences = growth.get(dim, ("", []))
        if not sentences:
            continue
        action = " ".join(sentences[1:]) or (coaching_items[0] if coaching_items else "")
        improvements.append(
            Improvement(
                title=f"{dim}: {head}" if head else f"{dim} 차원 키우기",
                description=sentences[0],
                action=action or sentences[0],
            )
        )
        if len(improvements) == 2:
            break
    for dim in _dimension_order(t.code, scores):
        if len(improvements) == 2:
            break
        if any(i.title.startswith(dim) for i in improvements):
            continue
        improvements.append(
            Improvement(
                title=f"{dim} 차원 키우기",
                description=f"{dim}({DIMENSION_DESCRIPTIONS[dim]})은 팀의 다음 성장을 좌우합니다.",
                action=f"이번 주 팀 회의에서 {dim}과 관련해 팀원이 바라는 것 한 가지를 물어보세요.",
            )
        )

    growth_actions = [" ".join(s[1:]) for _, s in growth.values() if len(s) > 1]
    steps = coaching_items or growth_actions or [i.action for i in improvements]
    action_plan = ActionPlan(
        immediate=steps[0],
        short_term=steps[1] if len(steps) > 1 else improvements[0].action,
        long_term=steps[-1] if len(steps) > 2 else improvements[-1].action,
    )

    advice = _generic_followers(t)
    for f in FOLLOWERSHIP_TYPES:
        body = pairing.find(f"({f})") if pairing is not None else ""
        match = _PAIRING.match(_plain(body)) if body else None
        if match is None:
            continue
        lead = match["lead"].strip()
        how = match["how"].strip()
        if match["say"]:
            how = f"{how} 예시 한마디: {match['say'].strip()}"
        advice[f] = {
            "synergy": f"{lead} {match['synergy'].strip()}".strip(),
            "caution": match["caution"].strip(),
            "how_to_work_together": how,
        }
    followership = [
        Followership(type=f, name=FOLLOWERSHIP_NAMES[f], score=compat[f], **advice[f])
        for f in FOLLOWERSHIP_TYPES
    ]

    risks = find("리스크")
    checklist = _CHECKLIST.search(risks)
    signals = (
        [s.strip().rstrip(".") for s in checklist.group(1).split(" / ") if s.strip()]
        if checklist
        else [_plain(b) for b in _BULLET.findall(risks)]
    )[:4]
    candidates = coaching_items + growth_actions
    used: set[int] = set()
    risk_signals = [
        RiskSignal(signal=s, action=_best_match(s, candidates, used)) for s in signals if candidates
    ] or [
        RiskSignal(
            signal=f"팀원이 {_dimension_order(t.code, scores)[0]} 차원에서 불편을 말하기 시작한다",
            action="1on1에서 구체적인 장면을 묻고, 바꿀 수 있는 한 가지를 함께 정하세요.",
        )
    ]
    report = Report(
        summary=summary,
        strengths=strengths,
        improvements=improvements,
        action_plan=action_plan,
        followership=followership,
        risk_signals=risk_signals,
    )
    return report, sources


# --------------------------------------------------------------------------- the service


class Retrieval(Protocol):
    async def search(
        self,
        query: str,
        *,
        leadership_type: str | None = None,
        k: int = 4,
        categories: Sequence[str] | None = None,
        followership_types: Sequence[str] | None = None,
    ) -> Sequence[Any]: ...


class InvalidReport(Exception):
    """The model's answer failed validation twice."""


@dataclass(frozen=True, slots=True)
class ReportResult:
    """A report response. `raw` is the Redis copy, already rendered with `cached: true`."""

    cached: bool
    data: dict[str, Any] | None = None
    raw: bytes | None = None

    def body(self) -> bytes:
        if self.raw is not None:
            return self.raw
        assert self.data is not None
        return dumps({**self.data, "cached": self.cached})

    def as_dict(self) -> dict[str, Any]:
        if self.data is not None:
            return {**self.data, "cached": self.cached}
        assert self.raw is not None
        loaded: dict[str, Any] = orjson.loads(self.raw)
        return loaded


@dataclass(frozen=True, slots=True)
class _Composed:
    report: Report
    sources: list[dict[str, Any]]
    provider: str
    model: str | None
    ttl: timedelta
    usage: Usage = field(default_factory=Usage)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def report_body(row: asyncpg.Record | Mapping[str, Any]) -> dict[str, Any]:
    """The response body for a stored report, without `cached`."""
    body: dict[str, Any] = {
        "report_id": str(row["id"]),
        "leadership_type": row["leadership_type"],
        "leadership_code": row["leadership_code"],
        "scores": row["scores"],
    }
    if row["confidence"] is not None:
        body["confidence"] = row["confidence"]
        body["all_scores"] = row["all_scores"]
    body.update(
        report=row["report"],
        sources=row["sources"],
        provider=row["provider"],
        model=row["model"],
        prompt_version=row["prompt_version"],
        kb_version=row["kb_version"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )
    return body


def _source_of(passage: Any) -> dict[str, Any]:
    source = getattr(passage, "source", None)
    if callable(source):
        value = source()
        if isinstance(value, dict):
            return value
    return {"path": passage.path, "title": passage.title, "category": passage.category}


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
        self._inflight: dict[tuple[str, str], asyncio.Task[tuple[ReportResult, bool]]] = {}
        self._redis_logged_at = 0.0
        if classifier is None:
            self._classifier_id = "rule-4.5"
        else:
            self._classifier_id = str(classifier.metadata.get("sha256") or classifier.version)

    def _kb_version(self) -> str:
        value = getattr(self.retriever, "kb_version", None) if self.retriever else None
        if callable(value):
            value = value()
        return value if isinstance(value, str) and value else self.knowledge.version

    async def aclose(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- inputs -----------------------------------------------------------------------

    def resolve(
        self, user: Principal, *, leadership_type: str | None, assessment: object | None
    ) -> ReportInputs:
        if self.settings.pii_masking:
            # Inputs reach error messages (unknown keys) and logs; never a raw value.
            leadership_type = None if leadership_type is None else mask_pii(leadership_type)
            assessment = mask_tree(assessment)
        requested: LeadershipType | None = None
        if leadership_type is not None:
            requested = resolve_type(leadership_type)
            if requested is None:
                raise ValidationFailed(
                    "leadership_type: unknown type (use a code such as HHH, an id such as "
                    "PARTICIPATIVE_COACHING, or a Korean name such as 참여코칭형)",
                    field="leadership_type",
                )
        parsed = parse_assessment(assessment) if assessment is not None else None
        code: str | None
        scores: dict[str, float] | None = None
        answers: dict[str, int] | None = None
        if parsed is not None and parsed.answers is not None:
            answers = parsed.answers
            scores = {d: round(v, 4) for d, v in scores_from_answers(answers).items()}
            code = None
        elif parsed is not None and parsed.scores is not None:
            scores = parsed.scores
            code = code_from_scores(scores)
        elif requested is not None:
            code = requested.code
        else:
            from_token = resolve_type(user.leadership_type) if user.leadership_type else None
            if from_token is None:
                raise ValidationFailed(
                    "leadership_type: required when there is no assessment and the token "
                    "carries no leadership type",
                    field="leadership_type",
                )
            code = from_token.code
        material = {
            "code": code,
            "answers": answers,
            "scores": None if answers is not None else report_scores(scores),
            "classifier": self._classifier_id if answers is not None else None,
            "prompt": self.prompt_version,
            "kb": self.kb_version,
            "provider": f"{self.provider.name}/{self.provider.model}",
        }
        key = hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return ReportInputs(user.user_id, key[:32], code, scores, answers)

    # -- reading ----------------------------------------------------------------------

    async def interpret(
        self, user: Principal, *, leadership_type: str | None, assessment: object | None
    ) -> ReportResult:
        inputs = self.resolve(user, leadership_type=leadership_type, assessment=assessment)
        found = await self._lookup(inputs, count=True)
        if found is not None:
            return found
        flight = (inputs.user_id, inputs.cache_key)
        task = self._inflight.get(flight)
        leader = task is None
        if task is None:
            task = asyncio.create_task(self._single_flight(inputs))
            self._inflight[flight] = task
            task.add_done_callback(lambda t: self._flight_done(flight, t))
        result, generated = await asyncio.shield(task)
        if leader and generated:
            return result
        return ReportResult(cached=True, data=result.data, raw=result.raw)

    def _flight_done(self, flight: tuple[str, str], task: asyncio.Task[Any]) -> None:
        if self._inflight.get(flight) is task:
            del self._inflight[flight]
        if not task.cancelled():
            # Retrieved so an error nobody awaited any more (all clients left) is not
            # reported as "never retrieved"; the awaiting requests have their own copy.
            task.exception()

    async def get(self, user: Principal, report_id: uuid.UUID) -> dict[str, Any]:
        try:
            async with self.pool.acquire() as conn:
                row = await repo.get_report(conn, report_id=report_id, user_id=user.user_id)
        except _DB_DOWN as exc:
            raise ServiceUnavailable("report storage is unavailable") from exc
        return {**report_body(row), "cached": True}

    def _hot_key(self, inputs: ReportInputs) -> str:
        return f"{self.settings.redis_prefix}report:{inputs.user_id}:{inputs.cache_key}"

    def _lock_key(self, inputs: ReportInputs) -> str:
        return f"{self.settings.redis_prefix}report-lock:{inputs.user_id}:{inputs.cache_key}"

    def _redis_failed(self, op: str, exc: BaseException) -> None:
        self.metrics.degraded.labels("redis").inc()
        now = time.monotonic()
        if now - self._redis_logged_at >= _REDIS_LOG_EVERY_S:
            self._redis_logged_at = now
            log.warning(
                "redis unavailable for the report cache; serving from Postgres",
                extra={"op": op, "error": f"{type(exc).__name__}: {exc}"[:200]},
            )

    async def _hot_get(self, inputs: ReportInputs, *, count: bool) -> bytes | None:
        try:
            value = await self.redis.get(self._hot_key(inputs))
        except (RedisError, OSError) as exc:
            self._redis_failed("get", exc)
            if count:
                self.metrics.cache.labels("redis", "error").inc()
            return None
        if count:
            self.metrics.cache.labels("redis", "hit" if value else "miss").inc()
        return value.encode() if isinstance(value, str) else value

    async def _hot_set(self, inputs: ReportInputs, data: dict[str, Any]) -> None:
        remaining = (data["expires_at"] - datetime.now(UTC)).total_seconds()
        ttl_ms = int(min(self.settings.report_cache_ttl_s, remaining) * 1000)
        if ttl_ms <= 0:
            return
        try:
            await self.redis.set(self._hot_key(inputs), dumps({**data, "cached": True}), px=ttl_ms)
        except (RedisError, OSError) as exc:
            self._redis_failed("set", exc)

    async def _lookup(self, inputs: ReportInputs, *, count: bool) -> ReportResult | None:
        raw = await self._hot_get(inputs, count=count)
        if raw is not None:
            return ReportResult(cached=True, raw=raw)
        try:
            async with self.pool.acquire() as conn:
                row = await repo.find_fresh(
                    conn, user_id=inputs.user_id, cache_key=inputs.cache_key
                )
        except _DB_DOWN as exc:
            raise ServiceUnavailable("report storage is unavailable") from exc
        if count:
            self.metrics.cache.labels("postgres", "miss" if row is None else "hit").inc()
        if row is None:
            return None
        data = report_body(row)
        await self._hot_set(inputs, data)
        return ReportResult(cached=True, data=data)

    # -- generating once --------------------------------------------------------------

    async def _single_flight(self, inputs: ReportInputs) -> tuple[ReportResult, bool]:
        """(result, whether this process generated it)."""
        lock_key = self._lock_key(inputs)
        token = secrets.token_hex(16)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_budget_s
        delay = _POLL_MIN_S
        while True:
            try:
                acquired = await self.redis.set(lock_key, token, nx=True, px=LOCK_TTL_MS)
            except (RedisError, OSError) as exc:
                self._redis_failed("lock", exc)
                # No cross-process lock: this process still generates once, and the
                # Postgres upsert makes concurrent writers converge on one row.
                found = await self._lookup(inputs, count=False)
                return (found, False) if found is not None else await self._generate(inputs)
            if acquired:
                try:
                    # Another process may have finished between our miss and the lock.
                    found = await self._lookup(inputs, count=False)
                    if found is not None:
                        return found, False
                    async with self._heartbeat(lock_key, token):
                        return await self._generate(inputs)
                finally:
                    await self._release(lock_key, token)
            raw = await self._hot_get(inputs, count=False)
            if raw is not None:
                return ReportResult(cached=True, raw=raw), False
            if loop.time() >= deadline:
                error = ServiceUnavailable(
                    "this report is still being generated; retry shortly",
                    code="report_pending",
                )
                error.headers["Retry-After"] = "2"
                raise error
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, _POLL_MAX_S)

    @contextlib.asynccontextmanager
    async def _heartbeat(self, key: str, token: str) -> AsyncIterator[None]:
        async def beat() -> None:
            while True:
                await asyncio.sleep(_HEARTBEAT_S)
                try:
                    await self.redis.eval(_EXTEND, 1, key, token, str(LOCK_TTL_MS))
                except (RedisError, OSError) as exc:
                    self._redis_failed("lock-extend", exc)

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _release(self, key: str, token: str) -> None:
        try:
            await self.redis.eval(_RELEASE, 1, key, token)
        except (RedisError, OSError) as exc:
            # The lock expires on its own after LOCK_TTL_MS.
            self._redis_failed("unlock", exc)

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
        except _DB_DOWN as exc:
            raise ServiceUnavailable("report storage is unavailable") from exc
        data = report_body(row)
        await self._hot_set(inputs, data)
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
        focus = _dimension_order(leader.code, scores)[0]
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

    def _prompt(
        self,
        leader: LeadershipType,
        scores: dict[str, float] | None,
        compat: dict[str, int],
        passages: Sequence[PassageLike],
    ) -> str:
        lines = [type_context(leader.code)]
        lines.append(_score_line(scores) or "차원별 점수는 없습니다(유형 코드만 알려짐).")
        lines.append(
            "팔로워 유형별 궁합 점수(0~100, 시스템이 계산한 값이며 리포트에 그대로 표시됩니다): "
            + ", ".join(f"{FOLLOWERSHIP_NAMES[f]} {compat[f]}" for f in FOLLOWERSHIP_TYPES)
        )
        lines.append("")
        lines.append(context_block(passages))
        lines.append("")
        lines.append("위 자료를 근거로 이 리더의 리더십 해석 리포트를 JSON으로 작성하세요.")
        return "\n".join(lines)

    async def _compose_llm(
        self, leader: LeadershipType, scores: dict[str, float] | None, ttl: timedelta
    ) -> _Composed:
        compat = compatibility_scores(leader.code, scores)
        passages = await self._passages(leader, scores)
        prompt = self._prompt(leader, scores, compat, passages)
        system = f"{REPORT_SYSTEM}\n\n{type_context(leader.code)}"
        spent = Usage()
        text = await self._generate_json(system, prompt, spent)
        try:
            generated = GeneratedReport.model_validate_json(text)
        except ValidationError as exc:
            self.metrics.llm_errors.labels(self.provider.name, "invalid_json").inc()
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '$'}: {e['msg']}" for e in exc.errors()[:8]
            )
            repair = (
                f"{prompt}\n\n이전 응답이 스키마에 맞지 않았습니다({problems}). "
                f"이전 응답:\n{text[:6000]}\n\n스키마에 맞는 JSON 객체 하나만 다시 출력하세요."
            )
            text = await self._generate_json(system, repair, spent)
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
        sources: list[dict[str, Any]] = []
        seen: set[str] = set()
        for p in passages:
            src = _source_of(p)
            if src.get("path") not in seen:
                seen.add(str(src.get("path")))
                sources.append(src)
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
