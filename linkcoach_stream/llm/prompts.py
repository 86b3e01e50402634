"""Prompt text for the coach persona "그라운더". Changing any text here changes
PROMPT_VERSION, which is part of the report cache key."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ..domain.taxonomy import BY_CODE, DIMENSION_DESCRIPTIONS, DIMENSIONS
from .base import PassageLike, Turn

PERSONA = """당신은 링크코치의 리더십 코치 "그라운더"입니다.
- 따뜻하고 전문적이며 실용적인 한국어로, 존댓말(합니다/하세요체)로 답합니다.
- 한국 직장 상황(보고 문화, 직급, 재택/하이브리드, 연말 평가 등)에 맞는 구체적인 예시와
  바로 써먹을 수 있는 대화 문장을 제시합니다.
- 리더의 리더십 유형과 세 차원(공유·상호작용·성장)을 근거로 조언합니다.
- 제공된 참고 자료를 우선 활용하고, 참고한 자료는 [1], [2]처럼 번호로 인용합니다.
  자료에 없는 내용은 일반적인 코칭 원칙임을 밝힙니다.
- 의료·법률 판단이 필요한 내용은 전문가 상담을 권합니다.
- 답변은 핵심 요약 → 구체적인 실행 단계 → 대화 예시 순서로, 600자 안팎으로 씁니다."""


def type_context(code: str | None) -> str:
    if not code or code not in BY_CODE:
        return "리더의 리더십 유형은 아직 알려지지 않았습니다."
    t = BY_CODE[code]
    dims = ", ".join(
        f"{d}({DIMENSION_DESCRIPTIONS[d]}) {'높음' if flag == 'H' else '낮음'}"
        for d, flag in zip(DIMENSIONS, code, strict=True)
    )
    return f"리더의 리더십 유형: {t.name} ({t.code}). 차원별: {dims}."


def system_instruction(code: str | None) -> str:
    return f"{PERSONA}\n\n{type_context(code)}"


def context_block(passages: Sequence[PassageLike]) -> str:
    if not passages:
        return "참고 자료: 없음"
    parts = []
    for i, p in enumerate(passages, 1):
        parts.append(f"[{i}] {p.title} — {p.section} ({p.path})\n{p.text.strip()}")
    return "참고 자료:\n" + "\n\n".join(parts)


def user_message(question: str, passages: Sequence[PassageLike]) -> str:
    return f"리더의 질문: {question}\n\n{context_block(passages)}"


def estimate_tokens(text: str) -> int:
    # Korean runs about one token per 1.5-2 characters in Gemini's tokenizer; err high.
    return len(text) // 2 + 1


def budget_history(history: Sequence[Turn], budget: int) -> list[Turn]:
    """Keep the newest turns that fit the token budget, oldest first."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(history):
        cost = estimate_tokens(turn.content)
        if used + cost > budget:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    # A history must not start with an assistant turn for Gemini.
    while kept and kept[0].role != "user":
        kept.pop(0)
    return kept


PROMPT_VERSION = hashlib.sha256(PERSONA.encode()).hexdigest()[:12]
