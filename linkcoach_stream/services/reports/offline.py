"""The offline report composer: a complete report from the knowledge base, with no model.

It serves the offline provider, and any request whose model call failed (then cached for
a short while only, see `service`). It is deterministic: it parses the type profile's
`##` sections and the pairing guide's per-follower sections
(`시너지: … 주의: … 함께 일하는 법: … 한마디: …`), and it falls back to generic advice
only where a file is missing or malformed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ...domain.compatibility import compatibility_scores
from ...domain.taxonomy import (
    DIMENSION_DESCRIPTIONS,
    DIMENSIONS,
    FOLLOWERSHIP_NAMES,
    FOLLOWERSHIP_TYPES,
    LeadershipType,
)
from ...llm.prompts import type_context
from .knowledge import ReportKnowledge
from .schema import ActionPlan, Followership, Improvement, Report, RiskSignal, Strength

# Bump when the composer's output changes: it is part of the report prompt version (and
# so of the cache key), next to the prompt text and the schema.
COMPOSER_REVISION = "1"
OFFLINE_LABEL = "[오프라인 리포트] "
OFFLINE_MODEL = "offline-report-composer-1"

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


def score_line(scores: Mapping[str, float] | None) -> str:
    if scores is None:
        return ""
    dims = " · ".join(f"{d} {scores[d]:.1f}" for d in DIMENSIONS)
    return f"진단 점수는 {dims}점입니다(4.5점 이상이 높음)."


def dimension_order(code: str, scores: Mapping[str, float] | None) -> list[str]:
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
    summary_parts.append(score_line(scores))
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
    for dim in dimension_order(t.code, scores):
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
    for dim in dimension_order(t.code, scores):
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
            signal=f"팀원이 {dimension_order(t.code, scores)[0]} 차원에서 불편을 말하기 시작한다",
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
