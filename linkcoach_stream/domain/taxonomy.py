"""The leadership taxonomy: three dimensions, eight types, five followership types.

A dimension is High when its score (1-6) is at least 4.5; the code is H/L for
공유, 상호작용, 성장 in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

HIGH_THRESHOLD = 4.5
SCORE_MIN = 1.0
SCORE_MAX = 6.0

DIMENSIONS: tuple[str, ...] = ("공유", "상호작용", "성장")
DIMENSION_DESCRIPTIONS: dict[str, str] = {
    "공유": "목표 공유와 참여",
    "상호작용": "관계와 소통",
    "성장": "구성원 개개인의 성장 지원",
}


@dataclass(frozen=True, slots=True)
class LeadershipType:
    code: str
    name: str
    id: str


LEADERSHIP_TYPES: tuple[LeadershipType, ...] = (
    LeadershipType("HHH", "참여코칭형", "PARTICIPATIVE_COACHING"),
    LeadershipType("HLL", "참여실무형", "PARTICIPATIVE_TASK"),
    LeadershipType("HLH", "참여비전형", "PARTICIPATIVE_VISION"),
    LeadershipType("HHL", "참여친밀형", "PARTICIPATIVE_RELATIONAL"),
    LeadershipType("LHH", "개별코칭형", "INDIVIDUAL_COACHING"),
    LeadershipType("LLH", "개별비전형", "INDIVIDUAL_VISION"),
    LeadershipType("LHL", "개별친밀형", "INDIVIDUAL_RELATIONAL"),
    LeadershipType("LLL", "과도기형", "TRANSITIONAL"),
)

BY_CODE = {t.code: t for t in LEADERSHIP_TYPES}
BY_NAME = {t.name: t for t in LEADERSHIP_TYPES}
BY_ID = {t.id: t for t in LEADERSHIP_TYPES}

FOLLOWERSHIP_TYPES: tuple[str, ...] = ("driver", "thinker", "supporter", "doer", "follower")
FOLLOWERSHIP_NAMES: dict[str, str] = {
    "driver": "주도형(Driver)",
    "thinker": "사고형(Thinker)",
    "supporter": "지원형(Supporter)",
    "doer": "실행형(Doer)",
    "follower": "순응형(Follower)",
}


def resolve_type(value: str) -> LeadershipType | None:
    """Accept a code (HHH), an id (PARTICIPATIVE_COACHING) or a Korean name (참여코칭형)."""
    key = value.strip()
    return BY_CODE.get(key.upper()) or BY_ID.get(key.upper()) or BY_NAME.get(key)


def leadership_code(value: str | None) -> str | None:
    """The code of a named type (see `resolve_type`); None for no name, ValueError for an
    unknown one. The one resolution behind tokens, the demo page and retrieval."""
    if not value:
        return None
    resolved = resolve_type(value)
    if resolved is None:
        raise ValueError(f"unknown leadership type {value!r}")
    return resolved.code


def code_from_scores(scores: dict[str, float]) -> str:
    return "".join("H" if scores[d] >= HIGH_THRESHOLD else "L" for d in DIMENSIONS)


def type_from_scores(scores: dict[str, float]) -> LeadershipType:
    return BY_CODE[code_from_scores(scores)]
