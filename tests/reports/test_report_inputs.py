"""The report cache key from the scores alone: one rounding, at one decimal, plus the side
of 4.5 that the exact score is on."""

from __future__ import annotations

import pytest

from linkcoach_stream.services.auth import Principal
from linkcoach_stream.services.reports.inputs import ReportInputs, report_scores, resolve_inputs

USER = Principal("u-1", None, None, "jti", 0)


def resolved(sharing: float, interaction: float = 3.0, growth: float = 5.0) -> ReportInputs:
    return resolve_inputs(
        USER,
        leadership_type=None,
        assessment={"공유": sharing, "상호작용": interaction, "성장": growth},
        mask=False,
        classifier_id="clf",
        prompt_version="p1",
        kb_version="kb1",
        provider="offline/offline",
    )


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1.34997, 1.3),  # was keyed 1.4: rounded to 1.35 first, then to one decimal
        (1.25001, 1.3),
        (4.49996, 4.47),  # both low; four decimals made 4.49996 a high 4.5
        (4.4999, 4.45),
        (4.5, 4.54),
        (5.94999, 5.9),
    ],
)
def test_scores_that_round_alike_on_the_same_side_of_high_share_a_key(a: float, b: float) -> None:
    assert round(a, 1) == round(b, 1)
    assert (a >= 4.5) == (b >= 4.5)
    first, second = resolved(a), resolved(b)
    assert first.code == second.code
    assert first.cache_key == second.cache_key


@pytest.mark.parametrize(("a", "b"), [(1.34997, 1.4), (1.35001, 1.3), (4.49996, 4.5)])
def test_scores_that_round_apart_or_fall_either_side_of_high_get_two_keys(
    a: float, b: float
) -> None:
    assert resolved(a).cache_key != resolved(b).cache_key


def test_the_type_reads_the_exact_score_and_the_report_its_one_decimal() -> None:
    inputs = resolved(4.49996, 1.34997, 4.5)
    assert inputs.code == "LLH"
    assert inputs.scores == {"공유": 4.49996, "상호작용": 1.34997, "성장": 4.5}
    assert report_scores(inputs.scores) == {"공유": 4.5, "상호작용": 1.3, "성장": 4.5}
