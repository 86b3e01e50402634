"""A report request's `assessment`, validated: 18 raw item answers or three dimension scores.

Every error is a `ValidationFailed` naming the offending field (`assessment.answers.S3`,
`assessment.성장`), so a client can point at it.

Scores are returned exactly as sent, never rounded here: the >= 4.5 rule reads the exact
value (4.49996 is low), and the report rounds once, to its own precision
(`services.reports.inputs.report_scores`). Rounding here as well made a double rounding
(1.34997 -> 1.35 -> 1.4 where 1.34997 itself is 1.3) and let 4.49996 count as high.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationFailed
from .assessment_items import ITEM_IDS
from .taxonomy import DIMENSIONS, SCORE_MAX, SCORE_MIN

ANSWER_MIN, ANSWER_MAX = 1, 6


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
        scores[dim] = float(value)
    return scores
