"""Machine-learned leadership-type classifier.

Names are resolved lazily (PEP 562) so that ``python -m linkcoach_stream.ml.classifier``
does not import the module twice (runpy warns about that), and importing the
package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from linkcoach_stream.ml.classifier import (
        ITEMS,
        LeadershipClassifier,
        Prediction,
        UntrustedArtifactError,
        generate_synthetic,
        load_csv,
        scores_from_answers,
        train,
        train_main,
    )

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
    if name in __all__:
        from linkcoach_stream.ml import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
