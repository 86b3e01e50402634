"""Machine-learned leadership-type classifier.

- ``model``: the run-time model (features, trusted-type list, safe loader, ``predict``)
- ``data``: the synthetic generator and the labelled-CSV reader
- ``training``: candidate comparison, ``train_main`` (writes artifact, sidecar, card)
- ``model_card``: the ``models/README.md`` text of a training run

Names are resolved lazily (PEP 562) so that ``python -m linkcoach_stream.ml.training``
does not import the module twice (runpy warns about that), and importing the
package stays cheap: serving imports ``model`` only, never the training code.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from linkcoach_stream.domain.assessment_items import ITEMS
    from linkcoach_stream.ml.data import generate_synthetic, load_csv
    from linkcoach_stream.ml.model import (
        LeadershipClassifier,
        Prediction,
        UntrustedArtifactError,
        scores_from_answers,
    )
    from linkcoach_stream.ml.training import train, train_main

_HOMES: dict[str, str] = {
    "ITEMS": "linkcoach_stream.domain.assessment_items",
    "LeadershipClassifier": "linkcoach_stream.ml.model",
    "Prediction": "linkcoach_stream.ml.model",
    "UntrustedArtifactError": "linkcoach_stream.ml.model",
    "scores_from_answers": "linkcoach_stream.ml.model",
    "generate_synthetic": "linkcoach_stream.ml.data",
    "load_csv": "linkcoach_stream.ml.data",
    "train": "linkcoach_stream.ml.training",
    "train_main": "linkcoach_stream.ml.training",
}

__all__ = [
    "ITEMS",
    "LeadershipClassifier",
    "Prediction",
    "UntrustedArtifactError",
    "generate_synthetic",
    "load_csv",
    "scores_from_answers",
    "train",
    "train_main",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is not None:
        return getattr(import_module(home), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
