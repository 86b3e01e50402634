"""How well a leader suits each follower type: the 0-100 compatibility scores a report shows.

The scores are computed here and never generated: the knowledge base gives qualitative
guidance only, and a model asked for numbers would invent them.
"""

from __future__ import annotations

from collections.abc import Mapping

from .taxonomy import DIMENSIONS, FOLLOWERSHIP_TYPES, SCORE_MAX, SCORE_MIN

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
