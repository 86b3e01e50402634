"""The shipped classifier artifact loads the way the app loads it, and predicts."""

from __future__ import annotations

from pathlib import Path

from linkcoach_stream.ml.model import CODES
from linkcoach_stream.services.reports import CLASSIFIER_FILENAME, load_classifier
from tests.conftest import ROOT
from tests.reports.conftest import answers_at


async def test_shipped_classifier_loads_and_predicts() -> None:
    classifier = await load_classifier(ROOT / "models" / CLASSIFIER_FILENAME)
    assert classifier is not None
    prediction = classifier.predict(answers_at(6, 6, 6))
    assert prediction.code == "HHH"
    assert set(prediction.all_scores) == set(CODES)
    assert abs(sum(prediction.all_scores.values()) - 1) < 1e-6
    assert classifier.predict(answers_at(1, 2, 1)).code == "LLL"


async def test_a_missing_artifact_is_tolerated(tmp_path: Path) -> None:
    assert await load_classifier(tmp_path / CLASSIFIER_FILENAME) is None
