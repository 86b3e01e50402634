"""The report's shape: the pydantic models of what the model returns (`GeneratedReport`)
and of what is stored and served (`Report`), and `REPORT_SCHEMA`, the JSON schema sent
with the request.

The model returns followership as an object keyed by follower type, so the schema itself
guarantees one entry per type; the stored report turns it into a list with the computed
compatibility score of each (`domain.compatibility`).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ...domain.taxonomy import FOLLOWERSHIP_TYPES

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
