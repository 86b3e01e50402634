from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from linkcoach_stream.domain.assessment_items import ITEM_IDS, ITEMS
from linkcoach_stream.ml.data import generate_synthetic, load_csv
from linkcoach_stream.ml.model import (
    CODES,
    LeadershipClassifier,
    UntrustedArtifactError,
    scores_from_answers,
)
from linkcoach_stream.ml.training import train_main

SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "models" / "leadership_classifier.skops"


def answers_at(sharing: int, interaction: int, growth: int) -> dict[str, int]:
    """A respondent agreeing at the given level, answering reverse items consistently."""
    level = {"공유": sharing, "상호작용": interaction, "성장": growth}
    return {i.id: 7 - level[i.dimension] if i.reverse else level[i.dimension] for i in ITEMS}


@pytest.fixture(scope="module")
def shipped() -> LeadershipClassifier:
    return LeadershipClassifier.load(SHIPPED_MODEL)


def test_item_set_has_six_items_per_dimension_with_reverse_items() -> None:
    assert len(ITEMS) == 18
    assert len(set(ITEM_IDS)) == 18
    for dimension, prefix in (("공유", "S"), ("상호작용", "I"), ("성장", "G")):
        items = [i for i in ITEMS if i.dimension == dimension]
        assert [i.id for i in items] == [f"{prefix}{k}" for k in range(1, 7)]
        assert any(i.reverse for i in items)


def test_rule_based_scores_flip_reverse_items() -> None:
    assert scores_from_answers(answers_at(6, 1, 5)) == {"공유": 6.0, "상호작용": 1.0, "성장": 5.0}
    # Answering 6 to everything, reverse items included, is not a perfect score.
    literal_sixes = scores_from_answers(dict.fromkeys(ITEM_IDS, 6))
    assert literal_sixes["공유"] == pytest.approx((4 * 6 + 2 * 1) / 6)


def test_shipped_model_loads_with_metadata(shipped: LeadershipClassifier) -> None:
    assert shipped.version == "1.0.0"
    assert shipped.metadata["classes"] == list(CODES)
    assert shipped.metadata["accuracy"] >= 0.85


@pytest.mark.parametrize(
    ("levels", "expected"),
    [((6, 6, 6), "HHH"), ((1, 1, 1), "LLL"), ((6, 1, 6), "HLH"), ((2, 6, 1), "LHL")],
)
def test_shipped_model_predicts_clear_cut_respondents(
    shipped: LeadershipClassifier, levels: tuple[int, int, int], expected: str
) -> None:
    prediction = shipped.predict(answers_at(*levels))
    assert prediction.code == expected
    assert prediction.confidence > 0.8
    assert prediction.confidence == prediction.all_scores[expected]


def test_prediction_probabilities_cover_all_codes_and_sum_to_one(
    shipped: LeadershipClassifier,
) -> None:
    prediction = shipped.predict(answers_at(5, 4, 3))
    assert set(prediction.all_scores) == set(CODES)
    assert sum(prediction.all_scores.values()) == pytest.approx(1.0)
    assert all(0.0 <= p <= 1.0 for p in prediction.all_scores.values())


def test_prediction_is_deterministic(shipped: LeadershipClassifier) -> None:
    answers = answers_at(4, 5, 4)
    assert shipped.predict(answers) == shipped.predict(answers)


def test_missing_item_is_named(shipped: LeadershipClassifier) -> None:
    answers = answers_at(6, 6, 6)
    del answers["I4"]
    with pytest.raises(ValueError, match="I4"):
        shipped.predict(answers)


@pytest.mark.parametrize("bad", [0, 7, -1, 3.0, "3", None, True])
def test_out_of_range_or_non_int_answer_is_named(
    shipped: LeadershipClassifier, bad: object
) -> None:
    answers: dict[str, object] = dict(answers_at(6, 6, 6))
    answers["G3"] = bad
    with pytest.raises(ValueError, match="G3"):
        shipped.predict(answers)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="G3"):
        scores_from_answers(answers)  # type: ignore[arg-type]


def test_unknown_item_is_named(shipped: LeadershipClassifier) -> None:
    answers = answers_at(6, 6, 6) | {"s1": 5}
    with pytest.raises(ValueError, match="s1"):
        shipped.predict(answers)


def test_numpy_integers_are_accepted(shipped: LeadershipClassifier) -> None:
    answers = {k: np.int64(v) for k, v in answers_at(6, 6, 6).items()}
    assert shipped.predict(answers).code == "HHH"  # type: ignore[arg-type]


def test_loader_refuses_artifact_with_untrusted_function(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    path = tmp_path / "evil.skops"
    sio.dump(Pipeline([("run", FunctionTransformer(os.system))]), path)
    with pytest.raises(UntrustedArtifactError, match="system"):
        LeadershipClassifier.load(path)


def test_loader_refuses_sklearn_estimator_it_does_not_train(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline

    X, y = generate_synthetic(50, seed=1)
    path = tmp_path / "other.skops"
    sio.dump(Pipeline([("model", KNeighborsClassifier())]).fit(X, y), path)
    with pytest.raises(UntrustedArtifactError, match="KNeighborsClassifier"):
        LeadershipClassifier.load(path)


def test_generate_synthetic_is_deterministic_for_a_seed() -> None:
    X1, y1 = generate_synthetic(300, seed=7)
    X2, y2 = generate_synthetic(300, seed=7)
    X3, _ = generate_synthetic(300, seed=8)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(X1, X3)
    assert X1.shape == (300, 18)
    assert X1.min() >= 1 and X1.max() <= 6
    assert set(y1.tolist()) == set(CODES)


def test_train_main_writes_artifacts_and_ends_with_json_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = train_main(data=None, out_dir=str(tmp_path), n=400, seed=3)

    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == {"accuracy": metrics["accuracy"]}
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert np.array(metrics["confusion_matrix"]).shape == (8, 8)
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["n_test"]

    metadata = json.loads((tmp_path / "leadership_classifier.json").read_text(encoding="utf-8"))
    assert metadata["feature_names"][-1] == "mean_성장"
    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "S1 | 공유" in card
    assert metrics["model"] in card

    trained = LeadershipClassifier.load(tmp_path / "leadership_classifier.skops")
    assert set(trained.predict(answers_at(6, 6, 6)).all_scores) == set(CODES)


def test_loader_refuses_sidecar_from_another_run(tmp_path: Path) -> None:
    train_main(data=None, out_dir=str(tmp_path), n=200, seed=4)
    sidecar = tmp_path / "leadership_classifier.json"
    metadata = json.loads(sidecar.read_text(encoding="utf-8"))
    metadata["sha256"] = "0" * 64
    sidecar.write_text(json.dumps(metadata), encoding="utf-8")
    with pytest.raises(ValueError, match="sha256"):
        LeadershipClassifier.load(tmp_path / "leadership_classifier.skops")


def write_csv(path: Path, X: np.ndarray, codes: list[str]) -> None:
    lines = [",".join([*ITEM_IDS, "code"])]
    lines += [",".join([*(str(v) for v in row), code]) for row, code in zip(X, codes, strict=True)]
    # A BOM, as Excel writes it for Korean CSVs.
    path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")


def test_train_main_reads_a_labelled_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    X, y = generate_synthetic(240, seed=5)
    codes = y.tolist()
    codes[0] = "참여코칭형"  # Korean type names are accepted and mapped to codes.
    csv_path = tmp_path / "answers.csv"
    write_csv(csv_path, X, codes)

    X_read, y_read = load_csv(csv_path)
    np.testing.assert_array_equal(X_read, X)
    assert y_read[0] == "HHH"

    metrics = train_main(data=str(csv_path), out_dir=str(tmp_path / "out"), n=0, seed=5)
    assert (
        json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"]
        == (metrics["accuracy"])
    )
    assert "answers.csv" in (tmp_path / "out" / "README.md").read_text(encoding="utf-8")


def test_load_csv_names_the_line_and_item(tmp_path: Path) -> None:
    X, y = generate_synthetic(5, seed=6)
    X[2, ITEM_IDS.index("S5")] = 9
    csv_path = tmp_path / "bad.csv"
    write_csv(csv_path, X, y.tolist())
    with pytest.raises(ValueError, match=r"line 4: .*S5"):
        load_csv(csv_path)
