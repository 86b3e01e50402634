"""Training data for the leadership classifier: the synthetic generator and the CSV reader.

Synthetic data (``generate_synthetic``) -- the shipped model is trained only on it:

1. Each person gets a mixture component: one of the 8 type codes, uniformly, so
   every type is represented.
2. Per dimension a latent trait is drawn from N(5.2, 0.4) when the component's
   letter is H and N(3.2, 0.7) when it is L, clipped to 1..6. The two normals
   overlap around 4.5, so the component is only a prior, not the label.
3. Each answer is ``latent + item bias + N(0, 0.7)``, rounded and clipped to 1..6;
   reverse items are then stored flipped (``7 - x``), as a respondent would
   answer them. Item biases (``ITEM_BIAS``) are fixed constants: some statements
   are easier to agree with than others.
4. The label is the type code from the *latent* traits by the >= 4.5 rule, not
   from the noisy answers, so the task is not separable and the rule-based
   scorer is not perfect on it.

Real data (``load_csv``): a UTF-8 CSV (a BOM is accepted) with a header holding
the 18 item ids and ``code``; each row is one respondent, answers are integers
1-6 as answered (reverse items *not* flipped), ``code`` is a type code such as
``HLH`` (a type id or Korean name is accepted too). Other columns are ignored.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from linkcoach_stream.domain.assessment_items import ANSWER_MAX, ANSWER_MIN, ITEM_IDS
from linkcoach_stream.domain.taxonomy import DIMENSIONS, code_from_scores, resolve_type
from linkcoach_stream.ml.model import CODES, DIM_INDEX, REVERSE, validate_answers

__all__ = [
    "H_MEAN",
    "H_SD",
    "ITEM_BIAS",
    "L_MEAN",
    "L_SD",
    "NOISE_SD",
    "generate_synthetic",
    "load_csv",
]

# Generator parameters; the model card prints them, so change them only here.
H_MEAN, H_SD = 5.2, 0.4
L_MEAN, L_SD = 3.2, 0.7
NOISE_SD = 0.7
# After reverse scoring these shift the dimension means by about +0.23 (공유),
# +0.25 (상호작용) and -0.25 (성장): the raw 4.5 cut is not calibrated per dimension.
ITEM_BIAS: dict[str, float] = {
    "S1": 0.5, "S2": 0.3, "S3": -0.1, "S4": 0.0, "S5": 0.2, "S6": -0.3,
    "I1": 0.1, "I2": 0.6, "I3": -0.2, "I4": 0.2, "I5": 0.4, "I6": 0.0,
    "G1": 0.0, "G2": -0.3, "G3": -0.6, "G4": 0.3, "G5": -0.2, "G6": 0.1,
}  # fmt: skip


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
    latent = np.where(high, rng.normal(H_MEAN, H_SD, shape), rng.normal(L_MEAN, L_SD, shape)).clip(
        ANSWER_MIN, ANSWER_MAX
    )
    bias = np.array([ITEM_BIAS[i] for i in ITEM_IDS])
    raw = latent[:, DIM_INDEX] + bias + rng.normal(0.0, NOISE_SD, (n, len(ITEM_IDS)))
    X = np.rint(raw).clip(ANSWER_MIN, ANSWER_MAX).astype(np.int64)
    X[:, REVERSE] = (ANSWER_MIN + ANSWER_MAX) - X[:, REVERSE]
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
                validate_answers(answers)
                if leadership_type is None:
                    raise ValueError(f"unknown type code {record['code']!r}")
            except ValueError as exc:
                raise ValueError(f"{path}, line {line}: {exc}") from None
            rows.append([int(answers[i]) for i in ITEM_IDS])  # type: ignore[call-overload]
            codes.append(leadership_type.code)
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return np.array(rows, dtype=np.int64), np.array(codes)
