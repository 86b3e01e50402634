"""Leadership-type classifier on raw assessment answers.

The assessment is 18 statements (``ITEMS``), six per dimension of the taxonomy
(공유, 상호작용, 성장), each answered on an integer 1-6 scale. Two items per
dimension are reverse-scored (``7 - x``). ``scores_from_answers`` is the
rule-based scorer (dimension means, compared with ``HIGH_THRESHOLD`` by the
taxonomy); ``LeadershipClassifier`` is the learned one.

Synthetic data (``generate_synthetic``) -- the shipped model is trained only on it:

1. Each person gets a mixture component: one of the 8 type codes, uniformly, so
   every type is represented.
2. Per dimension a latent trait is drawn from N(5.2, 0.4) when the component's
   letter is H and N(3.2, 0.7) when it is L, clipped to 1..6. The two normals
   overlap around 4.5, so the component is only a prior, not the label.
3. Each answer is ``latent + item bias + N(0, 0.7)``, rounded and clipped to 1..6;
   reverse items are then stored flipped (``7 - x``), as a respondent would
   answer them. Item biases (``_ITEM_BIAS``) are fixed constants: some statements
   are easier to agree with than others.
4. The label is the type code from the *latent* traits by the >= 4.5 rule, not
   from the noisy answers, so the task is not separable and the rule-based
   scorer is not perfect on it.

Real data (``load_csv``): a UTF-8 CSV (a BOM is accepted) with a header holding
the 18 item ids and ``code``; each row is one respondent, answers are integers
1-6 as answered (reverse items *not* flipped), ``code`` is a type code such as
``HLH`` (a type id or Korean name is accepted too). Other columns are ignored.

Design decisions:

- Features are computed outside the sklearn pipeline (``_features``) so the
  saved artifact holds only sklearn types; a ``FunctionTransformer`` would put a
  reference to our own function in the file and we would have to trust it.
- Loading uses ``skops.io.load`` with an explicit trusted list, never
  ``trusted=True`` and never pickle: a model file is code if loaded carelessly.
  After loading, the pipeline's steps are checked against the estimator classes
  this module trains, because skops trusts every sklearn estimator by default.
- The model is chosen by cross-validated accuracy on the training split, with
  the one-standard-error rule favouring the simplest candidate (they are listed
  simplest first); the held-out split is used once, to report figures, not to
  pick the winner.
- sklearn and skops take about a second each to import, so they are imported
  inside the functions that need them; importing this module costs only numpy.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from linkcoach_stream.domain.taxonomy import (
    BY_CODE,
    DIMENSIONS,
    HIGH_THRESHOLD,
    code_from_scores,
    resolve_type,
)

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

__all__ = [
    "CODES",
    "FEATURE_NAMES",
    "ITEMS",
    "ITEM_IDS",
    "MODEL_VERSION",
    "TRUSTED_TYPES",
    "Item",
    "LeadershipClassifier",
    "Prediction",
    "UntrustedArtifactError",
    "generate_synthetic",
    "load_csv",
    "scores_from_answers",
    "train",
    "train_main",
]

MODEL_VERSION = "1.0.0"
MODEL_FILENAME = "leadership_classifier.skops"
METADATA_FILENAME = "leadership_classifier.json"
CARD_FILENAME = "README.md"
ANSWER_MIN = 1
ANSWER_MAX = 6


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    dimension: str
    text: str
    reverse: bool = False


ITEMS: tuple[Item, ...] = (
    Item("S1", "공유", "나는 팀의 목표와 방향을 구성원들과 분명하게 공유한다."),
    Item("S2", "공유", "중요한 결정을 내리기 전에 구성원들의 의견을 구한다."),
    Item("S3", "공유", "팀의 목표는 내가 정하고 구성원들에게는 결과만 알린다.", reverse=True),
    Item("S4", "공유", "구성원들이 업무 계획을 세우는 과정에 직접 참여하게 한다."),
    Item("S5", "공유", "팀의 성과와 진행 상황을 구성원 모두가 알 수 있게 공개한다."),
    Item("S6", "공유", "업무 정보는 꼭 필요한 사람에게만 알려 주는 편이다.", reverse=True),
    Item("I1", "상호작용", "구성원들과 업무 외의 이야기도 자주 나눈다."),
    Item("I2", "상호작용", "구성원의 이야기를 끝까지 귀 기울여 듣는다."),
    Item("I3", "상호작용", "구성원들과의 대화는 주로 업무 지시에 그친다.", reverse=True),
    Item("I4", "상호작용", "구성원이 어려움을 겪을 때 먼저 다가가 이야기를 나눈다."),
    Item("I5", "상호작용", "구성원들이 나에게 편하게 의견을 말할 수 있는 분위기를 만든다."),
    Item("I6", "상호작용", "나는 구성원들과 정서적으로 거리를 두는 편이다.", reverse=True),
    Item("G1", "성장", "구성원 개개인의 강점과 보완할 점을 파악하고 있다."),
    Item("G2", "성장", "구성원에게 성장에 도움이 되는 구체적인 피드백을 준다."),
    Item("G3", "성장", "구성원의 경력 목표에 대해 함께 이야기한다."),
    Item("G4", "성장", "구성원의 역량 개발보다 당장의 성과가 더 중요하다.", reverse=True),
    Item("G5", "성장", "구성원에게 새로운 역할이나 도전적인 과제를 맡을 기회를 준다."),
    Item("G6", "성장", "구성원의 교육과 학습은 각자 알아서 할 일이라고 생각한다.", reverse=True),
)
ITEM_IDS: tuple[str, ...] = tuple(item.id for item in ITEMS)
_ITEM_SET = frozenset(ITEM_IDS)
# Sorted, which is also the order of sklearn's classes_ and of the confusion matrix.
CODES: tuple[str, ...] = tuple(sorted(BY_CODE))
FEATURE_NAMES: tuple[str, ...] = ITEM_IDS + tuple(f"mean_{d}" for d in DIMENSIONS)

_DIM_INDEX = np.array([DIMENSIONS.index(item.dimension) for item in ITEMS])
_REVERSE = np.array([item.reverse for item in ITEMS])

# Generator parameters; the model card prints them, so change them only here.
_H_MEAN, _H_SD = 5.2, 0.4
_L_MEAN, _L_SD = 3.2, 0.7
_NOISE_SD = 0.7
# After reverse scoring these shift the dimension means by about +0.23 (공유),
# +0.25 (상호작용) and -0.25 (성장): the raw 4.5 cut is not calibrated per dimension.
_ITEM_BIAS: dict[str, float] = {
    "S1": 0.5, "S2": 0.3, "S3": -0.1, "S4": 0.0, "S5": 0.2, "S6": -0.3,
    "I1": 0.1, "I2": 0.6, "I3": -0.2, "I4": 0.2, "I5": 0.4, "I6": 0.0,
    "G1": 0.0, "G2": -0.3, "G3": -0.6, "G4": 0.3, "G5": -0.2, "G6": 0.1,
}  # fmt: skip

# Type names skops does not trust by default but our candidate models need.
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
)
_CV_FOLDS = 5
_TEST_FRACTION = 0.2


class UntrustedArtifactError(ValueError):
    """A model file holds types or estimators this module does not load."""


@dataclass(frozen=True)
class Prediction:
    code: str
    confidence: float
    all_scores: dict[str, float]


# --- answers and rule-based scores ------------------------------------------------


def _validate_answers(answers: Mapping[str, object]) -> None:
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


def _answer_row(answers: Mapping[str, object]) -> np.ndarray:
    _validate_answers(answers)
    return np.array([[int(answers[i]) for i in ITEM_IDS]], dtype=np.int64)  # type: ignore[call-overload]


def _dimension_means(X: np.ndarray) -> np.ndarray:
    scored = X.astype(np.float64)
    scored[:, _REVERSE] = (ANSWER_MIN + ANSWER_MAX) - scored[:, _REVERSE]
    return np.stack([scored[:, _DIM_INDEX == d].mean(axis=1) for d in range(len(DIMENSIONS))], 1)


def scores_from_answers(answers: dict[str, int]) -> dict[str, float]:
    """Mean 1-6 score per dimension after reverse scoring (``7 - x``)."""
    means = _dimension_means(_answer_row(answers))[0]
    return {d: float(m) for d, m in zip(DIMENSIONS, means, strict=True)}


def _features(X: np.ndarray) -> np.ndarray:
    """The 18 answers as given plus the three reverse-scored dimension means."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != len(ITEM_IDS):
        raise ValueError(f"expected an (n, {len(ITEM_IDS)}) answer matrix, got {X.shape}")
    return np.hstack([X.astype(np.float64), _dimension_means(X)])


def _rule_codes(X: np.ndarray) -> np.ndarray:
    high = _dimension_means(X) >= HIGH_THRESHOLD
    return np.array(["".join("H" if h else "L" for h in row) for row in high])


# --- data ----------------------------------------------------------------------------


def generate_synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic respondents: ``(X, y)`` with X (n, 18) int answers, y type codes.

    See the module docstring for the generative story. Same ``(n, seed)``, same data.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng(seed)
    component_high = np.array([[c == "H" for c in code] for code in CODES])
    high = component_high[rng.integers(0, len(CODES), size=n)]
    shape = (n, len(DIMENSIONS))
    latent = np.where(
        high, rng.normal(_H_MEAN, _H_SD, shape), rng.normal(_L_MEAN, _L_SD, shape)
    ).clip(ANSWER_MIN, ANSWER_MAX)
    bias = np.array([_ITEM_BIAS[i] for i in ITEM_IDS])
    raw = latent[:, _DIM_INDEX] + bias + rng.normal(0.0, _NOISE_SD, (n, len(ITEM_IDS)))
    X = np.rint(raw).clip(ANSWER_MIN, ANSWER_MAX).astype(np.int64)
    X[:, _REVERSE] = (ANSWER_MIN + ANSWER_MAX) - X[:, _REVERSE]
    y = np.array(
        [code_from_scores(dict(zip(DIMENSIONS, row, strict=True))) for row in latent.tolist()]
    )
    return X, y


def load_csv(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a labelled CSV (columns: the 18 item ids + ``code``) into ``(X, y)``."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in (*ITEM_IDS, "code") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column {missing[0]}")
        rows: list[list[int]] = []
        codes: list[str] = []
        for line, record in enumerate(reader, start=2):
            answers: dict[str, object] = {}
            for item_id in ITEM_IDS:
                cell = (record[item_id] or "").strip()
                try:
                    answers[item_id] = int(cell)
                except ValueError:
                    answers[item_id] = cell
            leadership_type = resolve_type(record["code"] or "")
            try:
                _validate_answers(answers)
                if leadership_type is None:
                    raise ValueError(f"unknown type code {record['code']!r}")
            except ValueError as exc:
                raise ValueError(f"{path}, line {line}: {exc}") from None
            rows.append([int(answers[i]) for i in ITEM_IDS])  # type: ignore[call-overload]
            codes.append(leadership_type.code)
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return np.array(rows, dtype=np.int64), np.array(codes)


# --- training ------------------------------------------------------------------------


def _candidates(seed: int) -> dict[str, Pipeline]:
    """Candidate pipelines, simplest (smallest artifact) first; the order matters."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "logistic_regression": Pipeline(
            [("scale", StandardScaler()), ("model", LogisticRegression(C=1.0, max_iter=2000))]
        ),
        "hist_gradient_boosting": Pipeline(
            [("model", HistGradientBoostingClassifier(random_state=seed))]
        ),
        "random_forest": Pipeline(
            [
                (
                    "model",
                    RandomForestClassifier(
                        n_estimators=150, min_samples_leaf=10, random_state=seed, n_jobs=1
                    ),
                )
            ]
        ),
    }


def _allowed_step_types() -> tuple[type, ...]:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    return (
        StandardScaler,
        LogisticRegression,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )


def _folds(y: np.ndarray, seed: int) -> Any:
    from sklearn.model_selection import KFold, StratifiedKFold

    smallest = int(np.unique(y, return_counts=True)[1].min())
    # Stratify when every class can appear in every fold; tiny sets fall back to KFold.
    if smallest >= 2:
        return StratifiedKFold(min(_CV_FOLDS, smallest), shuffle=True, random_state=seed)
    return KFold(min(_CV_FOLDS, len(y)), shuffle=True, random_state=seed)


def train(X: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[Pipeline, dict[str, Any]]:
    """Pick the best candidate by CV on a training split and report on the held-out split.

    ``X`` is the (n, 18) raw answer matrix in ``ITEM_IDS`` order, ``y`` the type codes.
    The returned pipeline is fitted on the training split only, so the reported
    held-out figures describe exactly the shipped model.
    """
    from sklearn.base import clone
    from sklearn.metrics import accuracy_score, confusion_matrix
    from sklearn.model_selection import cross_val_score, train_test_split

    X = np.asarray(X)
    y = np.asarray(y).astype(str)
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
    bad = sorted(set(y.tolist()) - set(CODES))
    if bad:
        raise ValueError(f"unknown type code {bad[0]!r} in y")
    features = _features(X)
    counts = np.unique(y, return_counts=True)[1]
    n_test = max(1, round(len(y) * _TEST_FRACTION))
    stratify = y if counts.min() >= 2 and n_test >= len(counts) else None
    X_tr, X_te, y_tr, y_te, raw_tr, raw_te = train_test_split(
        features, y, X, test_size=n_test, random_state=seed, stratify=stratify
    )
    del raw_tr
    candidates: dict[str, dict[str, float]] = {}
    fitted: dict[str, Pipeline] = {}
    for name, pipeline in _candidates(seed).items():
        cv = cross_val_score(clone(pipeline), X_tr, y_tr, cv=_folds(y_tr, seed))
        model = pipeline.fit(X_tr, y_tr)
        fitted[name] = model
        candidates[name] = {
            "cv_accuracy": float(cv.mean()),
            "cv_std_error": float(cv.std(ddof=1) / np.sqrt(len(cv))) if len(cv) > 1 else 0.0,
            "test_accuracy": float(accuracy_score(y_te, model.predict(X_te))),
        }
    # One-standard-error rule: candidates are listed simplest first, and a bigger
    # model must beat the best by more than fold noise to be worth shipping.
    best_name = max(candidates, key=lambda k: candidates[k]["cv_accuracy"])
    floor = candidates[best_name]["cv_accuracy"] - candidates[best_name]["cv_std_error"]
    chosen = next(k for k, c in candidates.items() if c["cv_accuracy"] >= floor)
    best = fitted[chosen]
    predicted = best.predict(X_te)
    metrics: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_te, predicted)),
        "model": chosen,
        "candidates": candidates,
        "rule_based_accuracy": float(accuracy_score(y_te, _rule_codes(raw_te))),
        "labels": list(CODES),
        "confusion_matrix": confusion_matrix(y_te, predicted, labels=list(CODES)).tolist(),
        "n_train": len(y_tr),
        "n_test": len(y_te),
        "seed": seed,
    }
    return best, metrics


# --- inference -----------------------------------------------------------------------


def _sha256(path: Path) -> str:
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
        allowed = _allowed_step_types()
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
            if expected is not None and expected != _sha256(path):
                raise ValueError(f"{sidecar}: sha256 does not match {path.name}")
            if metadata.get("feature_names", list(FEATURE_NAMES)) != list(FEATURE_NAMES):
                raise ValueError(f"{sidecar}: model was trained on a different item set")
        return cls(pipeline, version=str(metadata.get("version", "unknown")), metadata=metadata)

    def predict(self, answers: dict[str, int]) -> Prediction:
        """Classify one respondent; raises ``ValueError`` naming the first bad item."""
        proba = self._pipeline.predict_proba(_features(_answer_row(answers)))[0]
        # Classes absent from training get 0, so all_scores always has all 8 codes.
        scores = dict.fromkeys(CODES, 0.0)
        for code, p in zip(self._classes, proba, strict=True):
            scores[code] = float(p)
        total = sum(scores.values())
        scores = {code: p / total for code, p in scores.items()}
        code = max(scores, key=lambda c: scores[c])
        return Prediction(code=code, confidence=scores[code], all_scores=scores)


# --- training entry point ------------------------------------------------------------


def _format_confusion(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    width = max(5, *(len(str(v)) + 1 for row in matrix for v in row))
    header = "true\\pred".ljust(10) + "".join(c.rjust(width) for c in labels)
    rows = [
        code.ljust(10) + "".join(str(v).rjust(width) for v in row)
        for code, row in zip(labels, matrix, strict=True)
    ]
    return "\n".join([header, *rows])


def _model_card(metadata: dict[str, Any]) -> str:
    m = metadata["metrics"]
    data = metadata["data"]
    labels, matrix = m["labels"], m["confusion_matrix"]
    if data["source"] == "synthetic":
        data_section = f"""Synthetic, from `generate_synthetic(n={data["n"]}, seed={data["seed"]})`
in `linkcoach_stream/ml/classifier.py`:

1. Each person gets a mixture component: one of the 8 type codes, uniformly, so
   every type is represented.
2. Per dimension a latent trait is drawn from N({_H_MEAN}, {_H_SD}) when the
   component's letter is H and N({_L_MEAN}, {_L_SD}) when it is L, clipped to 1-6.
3. Each answer = latent + item bias + N(0, {_NOISE_SD}), rounded and clipped to 1-6;
   reverse items are stored flipped (7 - x), as a respondent answers them.
4. The label is the type code of the **latent** traits by the >= {HIGH_THRESHOLD} rule,
   not of the noisy answers, so no model can be perfect on this data.

Because the label comes from the latent trait, a respondent near 4.5 on any
dimension is genuinely ambiguous; that is the error floor the figures below show."""
    else:
        data_section = f"""Labelled CSV `{data["file"]}` ({data["n"]} rows), read by `load_csv`:
a header with the 18 item ids and `code`, answers 1-6 as answered (reverse items
not flipped), `code` a type code such as `HLH`."""

    item_rows = "\n".join(
        f"| {i.id} | {i.dimension} | {i.text} | {'yes (7 - x)' if i.reverse else ''} | "
        f"{_ITEM_BIAS[i.id]:+.1f} |"
        for i in ITEMS
    )
    cand_rows = "\n".join(
        f"| {name}{' (chosen)' if name == m['model'] else ''} | "
        f"{c['cv_accuracy']:.3f} ± {c['cv_std_error']:.3f} | "
        f"{c['test_accuracy']:.3f} |"
        for name, c in m["candidates"].items()
    )
    cm_header = "| true \\ predicted | " + " | ".join(labels) + " |"
    cm_rule = "|---|" + "---:|" * len(labels)
    cm_rows = "\n".join(
        f"| **{code}** | " + " | ".join(str(v) for v in row) + " |"
        for code, row in zip(labels, matrix, strict=True)
    )
    flags = (
        f"--out models --n {data['n']} --seed {data['seed']}"
        if data["source"] == "synthetic"
        else f"--out models --data {data['file']} --seed {data['seed']}"
    )
    return f"""# Leadership-type classifier (v{metadata["version"]})

Predicts one of the 8 leadership types (taxonomy in
`linkcoach_stream/domain/taxonomy.py`) from the 18 raw item answers of the
assessment. Generated by `train_main` on {metadata["created"]}; every figure
below comes from that run and is reproduced by the command under *Retraining*.

- Artifact: `{MODEL_FILENAME}` (skops; sha256 `{metadata["sha256"]}`)
- Metadata: `{METADATA_FILENAME}`
- scikit-learn {metadata["sklearn_version"]}, skops {metadata["skops_version"]},
  numpy {metadata["numpy_version"]}, Python {metadata["python_version"]}

## Use

```python
from linkcoach_stream.ml import LeadershipClassifier

clf = LeadershipClassifier.load("models/{MODEL_FILENAME}")
pred = clf.predict({{"S1": 5, "S2": 6, ..., "G6": 2}})  # all 18 items, ints 1-6
pred.code, pred.confidence, pred.all_scores
```

`predict` raises `ValueError` naming the item when one is missing, unknown,
not an int, or outside 1-6. Loading goes through `skops.io.load` with an explicit
trusted list (`TRUSTED_TYPES`) and then checks the pipeline's steps; a file with
any other type is refused (`UntrustedArtifactError`). Never load it with pickle.

## Data

{data_section}

## Item set

6 items per dimension, integer answers 1 (전혀 아니다) to 6 (매우 그렇다). Reverse
items are scored 7 - x before averaging. The bias column is the synthetic
generator's per-item offset (how easy the statement is to agree with).

| id | dimension | text | reverse | generator bias |
|---|---|---|---|---:|
{item_rows}

## Features

{len(FEATURE_NAMES)} features: the 18 answers as given (`S1`..`G6`) and the three
reverse-scored dimension means (`mean_공유`, `mean_상호작용`, `mean_성장`), which are
the rule-based scores of `scores_from_answers`.

## Model

Candidates were compared by {_CV_FOLDS}-fold cross-validated accuracy on the training
split ({m["n_train"]} rows). The choice follows the one-standard-error rule: the
simplest candidate (table order) whose CV accuracy is within one standard error
of the best one wins, because a larger model must beat fold noise to be worth
shipping. The winner was fitted on the training split and evaluated once on the
held-out split ({m["n_test"]} rows, {_TEST_FRACTION:.0%}, stratified). Held-out accuracy
of the other candidates is shown for reference, not used for the choice.

| model | CV accuracy (train) ± s.e. | held-out accuracy |
|---|---:|---:|
{cand_rows}
| rule-based (`scores_from_answers` >= {HIGH_THRESHOLD}) | - | {m["rule_based_accuracy"]:.3f} |

**Chosen: `{m["model"]}`, held-out accuracy {m["accuracy"]:.3f}.**

### Confusion matrix (held-out; rows = true, columns = predicted)

{cm_header}
{cm_rule}
{cm_rows}

## Limits

- Trained on synthetic data only: the figures measure how well the model
  recovers the generator's latent rule, not real leaders. The accuracy on real
  respondents is unknown.
- The 18 statements were written for this project and have not been validated
  psychometrically (no reliability, factor structure or norming study); the
  4.5 threshold is taken from the taxonomy, not estimated.
- The generator assumes independent dimensions, normal noise, and no response
  styles (acquiescence, extreme or careless responding); real answers have them.
- The label of a respondent near 4.5 on any dimension is uncertain by design;
  use `confidence` / `all_scores` rather than the code alone for such cases.
- A coaching aid, not a basis for personnel decisions.

## Retraining

```sh
linkcoach train {flags}
# or, without the CLI:
python -m linkcoach_stream.ml.classifier {flags}
# on real labelled answers (CSV: 18 item-id columns + code):
linkcoach train --out models --data answers.csv
```

Retraining rewrites `{MODEL_FILENAME}`, `{METADATA_FILENAME}` and this card. The last
line printed is `{{"accuracy": ...}}`.
"""


def train_main(*, data: str | None, out_dir: str, n: int, seed: int) -> dict[str, Any]:
    """Train on ``data`` (a labelled CSV) or ``n`` synthetic rows; write model, JSON and card.

    Writes a short summary to stdout whose last line is ``{"accuracy": x}`` and
    returns the metrics from ``train``.
    """
    import sklearn
    import skops
    import skops.io as sio

    if data is None:
        X, y = generate_synthetic(n, seed)
        data_info: dict[str, Any] = {"source": "synthetic", "n": n, "seed": seed}
    else:
        X, y = load_csv(data)
        data_info = {"source": "csv", "file": Path(data).name, "n": len(y), "seed": seed}
    pipeline, metrics = train(X, y, seed)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILENAME
    sio.dump(pipeline, model_path)
    metadata: dict[str, Any] = {
        "version": MODEL_VERSION,
        "created": datetime.now(UTC).date().isoformat(),
        "model": metrics["model"],
        "accuracy": metrics["accuracy"],
        "classes": [str(c) for c in pipeline.classes_],
        "feature_names": list(FEATURE_NAMES),
        "item_ids": list(ITEM_IDS),
        "sklearn_version": sklearn.__version__,
        "skops_version": skops.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "trusted_types": list(TRUSTED_TYPES),
        "sha256": _sha256(model_path),
        "data": data_info,
        "metrics": metrics,
    }
    (out / METADATA_FILENAME).write_text(
        json.dumps(metadata, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    (out / CARD_FILENAME).write_text(_model_card(metadata), encoding="utf-8")

    candidates = ", ".join(
        f"{name} {c['cv_accuracy']:.3f}" for name, c in metrics["candidates"].items()
    )
    sys.stdout.write(
        f"data: {data_info['source']} ({len(y)} rows; train {metrics['n_train']}, "
        f"held-out {metrics['n_test']})\n"
        f"CV accuracy: {candidates}\n"
        f"chosen: {metrics['model']}, held-out accuracy {metrics['accuracy']:.3f} "
        f"(rule-based {metrics['rule_based_accuracy']:.3f})\n"
        f"confusion matrix (rows = true, columns = predicted):\n"
        f"{_format_confusion(metrics['labels'], metrics['confusion_matrix'])}\n"
        f"wrote {model_path}, {out / METADATA_FILENAME}, {out / CARD_FILENAME}\n"
        f"{json.dumps({'accuracy': metrics['accuracy']})}\n"
    )
    sys.stdout.flush()
    return metrics


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m linkcoach_stream.ml.classifier",
        description="Train the leadership-type classifier and write model, metadata and card.",
    )
    parser.add_argument("--data", help="labelled CSV (18 item ids + code); default: synthetic")
    parser.add_argument("--out", default="models", help="output directory (default: models)")
    parser.add_argument("--n", type=int, default=12000, help="synthetic rows (default: 12000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    train_main(data=args.data, out_dir=args.out, n=args.n, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
