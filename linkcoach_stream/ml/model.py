"""The leadership-type classifier at run time: features, the trusted-type list, the loader.

``scores_from_answers`` is the rule-based scorer (dimension means after reverse
scoring, compared with ``HIGH_THRESHOLD`` by the taxonomy); ``LeadershipClassifier``
is the learned one. Training (``ml.training``) imports the features, label order and
trusted types from here, never the reverse, so serving a model never loads the
training code.

Design decisions:

- Features are computed outside the sklearn pipeline (``features``) so the
  saved artifact holds only sklearn types; a ``FunctionTransformer`` would put a
  reference to our own function in the file and we would have to trust it.
- Loading uses ``skops.io.load`` with an explicit trusted list, never
  ``trusted=True`` and never pickle: a model file is code if loaded carelessly.
  After loading, the pipeline's steps are checked against the estimator classes
  training may produce (``allowed_step_types``), because skops trusts every
  sklearn estimator by default.
- sklearn and skops take about a second each to import, so they are imported
  inside the functions that need them; importing this module costs only numpy.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from linkcoach_stream.domain.assessment_items import ANSWER_MAX, ANSWER_MIN, ITEM_IDS, ITEMS
from linkcoach_stream.domain.taxonomy import BY_CODE, DIMENSIONS, HIGH_THRESHOLD

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

__all__ = [
    "CODES",
    "FEATURE_NAMES",
    "METADATA_FILENAME",
    "MODEL_FILENAME",
    "TRUSTED_TYPES",
    "LeadershipClassifier",
    "Prediction",
    "UntrustedArtifactError",
    "allowed_step_types",
    "answer_row",
    "dimension_means",
    "features",
    "rule_codes",
    "scores_from_answers",
    "sha256_of",
    "validate_answers",
]

MODEL_FILENAME = "leadership_classifier.skops"
# The loader reads the sidecar next to the artifact (same stem, ``.json``).
METADATA_FILENAME = "leadership_classifier.json"

_ITEM_SET = frozenset(ITEM_IDS)
# Sorted, which is also the order of sklearn's classes_ and of the confusion matrix.
CODES: tuple[str, ...] = tuple(sorted(BY_CODE))
FEATURE_NAMES: tuple[str, ...] = ITEM_IDS + tuple(f"mean_{d}" for d in DIMENSIONS)

DIM_INDEX = np.array([DIMENSIONS.index(item.dimension) for item in ITEMS])
REVERSE = np.array([item.reverse for item in ITEMS])

# Type names skops does not trust by default but our candidate models need.
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
)


class UntrustedArtifactError(ValueError):
    """A model file holds types or estimators this module does not load."""


@dataclass(frozen=True)
class Prediction:
    code: str
    confidence: float
    all_scores: dict[str, float]


def allowed_step_types() -> tuple[type, ...]:
    """The estimator classes a loaded pipeline may hold: every candidate training compares."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    return (
        StandardScaler,
        LogisticRegression,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )


# --- answers, rule-based scores and features ---------------------------------------


def validate_answers(answers: Mapping[str, object]) -> None:
    if not isinstance(answers, Mapping):
        raise ValueError(f"answers must be a mapping of item id to int, got {type(answers)!r}")
    for item_id in ITEM_IDS:
        if item_id not in answers:
            raise ValueError(f"missing answer for item {item_id}")
        value = answers[item_id]
        # bool is an int subclass; True is not an answer.
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"answer for item {item_id} must be an int, got {value!r}")
        if not ANSWER_MIN <= value <= ANSWER_MAX:
            raise ValueError(
                f"answer for item {item_id} must be {ANSWER_MIN}-{ANSWER_MAX}, got {value!r}"
            )
    unknown = sorted(str(k) for k in answers if k not in _ITEM_SET)
    if unknown:
        # A typo like "s1" would otherwise look like a complete, valid answer set.
        raise ValueError(f"unknown item {unknown[0]}")


def answer_row(answers: Mapping[str, object]) -> np.ndarray:
    validate_answers(answers)
    return np.array([[int(answers[i]) for i in ITEM_IDS]], dtype=np.int64)  # type: ignore[call-overload]


def dimension_means(X: np.ndarray) -> np.ndarray:
    scored = X.astype(np.float64)
    scored[:, REVERSE] = (ANSWER_MIN + ANSWER_MAX) - scored[:, REVERSE]
    return np.stack([scored[:, DIM_INDEX == d].mean(axis=1) for d in range(len(DIMENSIONS))], 1)


def scores_from_answers(answers: dict[str, int]) -> dict[str, float]:
    """Mean 1-6 score per dimension after reverse scoring (``7 - x``)."""
    means = dimension_means(answer_row(answers))[0]
    return {d: float(m) for d, m in zip(DIMENSIONS, means, strict=True)}


def features(X: np.ndarray) -> np.ndarray:
    """The 18 answers as given plus the three reverse-scored dimension means."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != len(ITEM_IDS):
        raise ValueError(f"expected an (n, {len(ITEM_IDS)}) answer matrix, got {X.shape}")
    return np.hstack([X.astype(np.float64), dimension_means(X)])


def rule_codes(X: np.ndarray) -> np.ndarray:
    high = dimension_means(X) >= HIGH_THRESHOLD
    return np.array(["".join("H" if h else "L" for h in row) for row in high])


# --- inference -----------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class LeadershipClassifier:
    """A loaded, validated model; ``predict`` maps one answer set to a ``Prediction``."""

    def __init__(self, pipeline: Pipeline, *, version: str, metadata: dict[str, Any]) -> None:
        self._pipeline = pipeline
        self._classes: list[str] = [str(c) for c in pipeline.classes_]
        self.version = version
        self.metadata = metadata

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LeadershipClassifier:
        """Load a skops artifact and its JSON sidecar (same stem), if there is one.

        Raises ``UntrustedArtifactError`` when the file holds a type outside
        ``TRUSTED_TYPES`` and skops' defaults, or is not one of our pipelines.
        """
        import skops.io as sio
        from sklearn.pipeline import Pipeline
        from skops.io.exceptions import UntrustedTypesFoundException

        path = Path(path)
        try:
            pipeline = sio.load(path, trusted=list(TRUSTED_TYPES))
        except UntrustedTypesFoundException as exc:
            raise UntrustedArtifactError(f"{path}: refusing untrusted types: {exc}") from exc
        if not isinstance(pipeline, Pipeline):
            raise UntrustedArtifactError(f"{path}: expected a sklearn Pipeline")
        allowed = allowed_step_types()
        for step_name, step in pipeline.steps:
            if type(step) not in allowed:
                raise UntrustedArtifactError(
                    f"{path}: step {step_name!r} is {type(step).__name__}, not a known estimator"
                )
        if getattr(pipeline, "n_features_in_", None) != len(FEATURE_NAMES):
            raise ValueError(f"{path}: model expects a different feature set")
        unknown = sorted({str(c) for c in pipeline.classes_} - set(CODES))
        if unknown:
            raise ValueError(f"{path}: model predicts unknown type code {unknown[0]!r}")

        metadata: dict[str, Any] = {}
        sidecar = path.with_suffix(".json")
        if sidecar.exists():
            metadata = json.loads(sidecar.read_text(encoding="utf-8"))
            # A sidecar from another training run would report the wrong figures.
            expected = metadata.get("sha256")
            if expected is not None and expected != sha256_of(path):
                raise ValueError(f"{sidecar}: sha256 does not match {path.name}")
            if metadata.get("feature_names", list(FEATURE_NAMES)) != list(FEATURE_NAMES):
                raise ValueError(f"{sidecar}: model was trained on a different item set")
        return cls(pipeline, version=str(metadata.get("version", "unknown")), metadata=metadata)

    def predict(self, answers: dict[str, int]) -> Prediction:
        """Classify one respondent; raises ``ValueError`` naming the first bad item."""
        proba = self._pipeline.predict_proba(features(answer_row(answers)))[0]
        # Classes absent from training get 0, so all_scores always has all 8 codes.
        scores = dict.fromkeys(CODES, 0.0)
        for code, p in zip(self._classes, proba, strict=True):
            scores[code] = float(p)
        total = sum(scores.values())
        scores = {code: p / total for code, p in scores.items()}
        code = max(scores, key=lambda c: scores[c])
        return Prediction(code=code, confidence=scores[code], all_scores=scores)
