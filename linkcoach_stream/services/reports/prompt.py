"""What the model is told: the system prompt, the report prompt and the repair prompt,
next to `REPORT_PROMPT_VERSION`.

The version hashes the system prompt, the JSON schema and the offline composer's revision,
so editing any of them changes the version (and with it every cache key) by itself. Gemini
writes the prose only: the prompt carries the computed compatibility scores, which
overwrite whatever the model returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import orjson

from ...domain.taxonomy import FOLLOWERSHIP_NAMES, FOLLOWERSHIP_TYPES, LeadershipType
from ...llm.base import PassageLike
from ...llm.prompts import context_block, type_context
from .offline import COMPOSER_REVISION, score_line
from .schema import REPORT_SCHEMA

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
        (REPORT_SYSTEM + orjson.dumps(REPORT_SCHEMA).decode() + COMPOSER_REVISION).encode()
    ).hexdigest()[:12]
)


def report_system(leader: LeadershipType) -> str:
    return f"{REPORT_SYSTEM}\n\n{type_context(leader.code)}"


def report_prompt(
    leader: LeadershipType,
    scores: dict[str, float] | None,
    compat: dict[str, int],
    passages: Sequence[PassageLike],
) -> str:
    lines = [type_context(leader.code)]
    lines.append(score_line(scores) or "차원별 점수는 없습니다(유형 코드만 알려짐).")
    lines.append(
        "팔로워 유형별 궁합 점수(0~100, 시스템이 계산한 값이며 리포트에 그대로 표시됩니다): "
        + ", ".join(f"{FOLLOWERSHIP_NAMES[f]} {compat[f]}" for f in FOLLOWERSHIP_TYPES)
    )
    lines.append("")
    lines.append(context_block(passages))
    lines.append("")
    lines.append("위 자료를 근거로 이 리더의 리더십 해석 리포트를 JSON으로 작성하세요.")
    return "\n".join(lines)


def repair_prompt(prompt: str, problems: str, answer: str) -> str:
    """The report prompt again, with the validation errors and the invalid answer."""
    return (
        f"{prompt}\n\n이전 응답이 스키마에 맞지 않았습니다({problems}). "
        f"이전 응답:\n{answer[:6000]}\n\n스키마에 맞는 JSON 객체 하나만 다시 출력하세요."
    )
