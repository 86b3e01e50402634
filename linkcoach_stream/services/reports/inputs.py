"""A report request resolved, with no I/O: what decides the leader's type, and the cache key.

Precedence: raw item answers (the classifier, at generation time), else dimension scores
(the >= 4.5 rule), else the request's `leadership_type`, else the token's; none is a 422.

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
- That is the only rounding between the request and the key or the stored report: the
  parsed scores and the answer means stay exact. The key then depends only on each
  score's `round(x, 1)` and its side of 4.5. An earlier rounding to four decimals made
  1.34997 key as 1.4 (1.34997 -> 1.35 -> 1.4) next to 1.3, and 4.49996 count as high.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from ...domain.assessment_input import parse_assessment
from ...domain.taxonomy import LeadershipType, code_from_scores, resolve_type
from ...errors import ValidationFailed
from ...ml.model import scores_from_answers
from ..auth import Principal
from ..pii import mask_pii, mask_tree

REPORT_SCORE_DECIMALS = 1


def report_scores(scores: Mapping[str, float] | None) -> dict[str, float] | None:
    """The scores a report is written from, keyed by, stores and returns: `round(x, 1)` of
    the exact scores, the report's one precision, applied once. The type is decided from
    the exact scores, not from these."""
    if scores is None:
        return None
    return {d: round(v, REPORT_SCORE_DECIMALS) for d, v in scores.items()}


@dataclass(frozen=True, slots=True)
class ReportInputs:
    user_id: str
    cache_key: str
    code: str | None  # None when answers decide it (classified on a miss)
    scores: dict[str, float] | None  # exact, unrounded; they decide the type by the 4.5 rule
    answers: dict[str, int] | None


def resolve_inputs(
    user: Principal,
    *,
    leadership_type: str | None,
    assessment: object | None,
    mask: bool,
    classifier_id: str,
    prompt_version: str,
    kb_version: str,
    provider: str,
) -> ReportInputs:
    """Validate the request and key it; `provider` is "name/model"."""
    if mask:
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
        scores = scores_from_answers(answers)
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
        "classifier": classifier_id if answers is not None else None,
        "prompt": prompt_version,
        "kb": kb_version,
        "provider": provider,
    }
    key = hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return ReportInputs(user.user_id, key[:32], code, scores, answers)
