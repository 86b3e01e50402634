"""Training the leadership classifier: candidate models, their comparison, the artifact.

``train`` compares the candidates on a training split and reports on a held-out split;
``train_main`` (``linkcoach train``, ``python -m linkcoach_stream.ml.training``) writes
the skops artifact, its JSON sidecar and the model card. Features, label order and the
trusted-type list come from ``ml.model``, which never imports this module.

Design decisions:

- The model is chosen by cross-validated accuracy on the training split, with
  the one-standard-error rule favouring the simplest candidate (they are listed
  simplest first); the held-out split is used once, to report figures, not to
  pick the winner.
- Every candidate's estimator classes must be in ``ml.model.allowed_step_types``,
  or the loader refuses the artifact this module writes.
- sklearn and skops are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from linkcoach_stream.domain.assessment_items import ITEM_IDS
from linkcoach_stream.ml.data import generate_synthetic, load_csv
from linkcoach_stream.ml.model import (
    CODES,
    FEATURE_NAMES,
    METADATA_FILENAME,
    MODEL_FILENAME,
    TRUSTED_TYPES,
    features,
    rule_codes,
    sha256_of,
)
from linkcoach_stream.ml.model_card import format_confusion, model_card

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

__all__ = ["CARD_FILENAME", "MODEL_VERSION", "train", "train_main"]

MODEL_VERSION = "1.0.0"
CARD_FILENAME = "README.md"
CV_FOLDS = 5
TEST_FRACTION = 0.2


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


def _folds(y: np.ndarray, seed: int) -> Any:
    from sklearn.model_selection import KFold, StratifiedKFold

    smallest = int(np.unique(y, return_counts=True)[1].min())
    # Stratify when every class can appear in every fold; tiny sets fall back to KFold.
    if smallest >= 2:
        return StratifiedKFold(min(CV_FOLDS, smallest), shuffle=True, random_state=seed)
    return KFold(min(CV_FOLDS, len(y)), shuffle=True, random_state=seed)


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
    feature_matrix = features(X)
    counts = np.unique(y, return_counts=True)[1]
    n_test = max(1, round(len(y) * TEST_FRACTION))
    stratify = y if counts.min() >= 2 and n_test >= len(counts) else None
    X_tr, X_te, y_tr, y_te, raw_tr, raw_te = train_test_split(
        feature_matrix, y, X, test_size=n_test, random_state=seed, stratify=stratify
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
        "rule_based_accuracy": float(accuracy_score(y_te, rule_codes(raw_te))),
        "labels": list(CODES),
        "confusion_matrix": confusion_matrix(y_te, predicted, labels=list(CODES)).tolist(),
        "n_train": len(y_tr),
        "n_test": len(y_te),
        "seed": seed,
    }
    return best, metrics


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
        "sha256": sha256_of(model_path),
        "data": data_info,
        "metrics": metrics,
    }
    (out / METADATA_FILENAME).write_text(
        json.dumps(metadata, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    (out / CARD_FILENAME).write_text(
        model_card(metadata, cv_folds=CV_FOLDS, test_fraction=TEST_FRACTION), encoding="utf-8"
    )

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
        f"{format_confusion(metrics['labels'], metrics['confusion_matrix'])}\n"
        f"wrote {model_path}, {out / METADATA_FILENAME}, {out / CARD_FILENAME}\n"
        f"{json.dumps({'accuracy': metrics['accuracy']})}\n"
    )
    sys.stdout.flush()
    return metrics


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m linkcoach_stream.ml.training",
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
