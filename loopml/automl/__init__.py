"""AutoML over cached embeddings and raw text: batched heads, k-fold CV, calibration, a deployable winner.

``run_automl(texts, embeddings, labels, label_set)`` cross-validates embedding heads (logistic regression and
an MLP, trained together in one PyTorch Lightning fit), Complement Naive Bayes on word 1-2 gram TF-IDF and an
ensemble of the best of both, calibrates each with a temperature fitted on out-of-fold logits, picks the
winner by calibrated out-of-fold log loss among the default linear head and the candidates that beat it
clearly (in standard errors of the paired difference) and refits it on all rows as a :class:`TextClassifier`
(``predict_proba``, ``save``, ``load``). See :mod:`loopml.automl.search`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .classifier import TextClassifier

if TYPE_CHECKING:
    from .search import AutoMLResult, CandidateScore, run_automl

# The search (scikit-learn, PyTorch Lightning: seconds of imports) is imported on first use, so that the serving
# process, which only loads and runs a TextClassifier, is ready seconds sooner after a (re)start.
_FROM_SEARCH = frozenset({"AutoMLResult", "CandidateScore", "run_automl"})


def __getattr__(name: str) -> Any:
    if name in _FROM_SEARCH:
        from . import search

        return getattr(search, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AutoMLResult", "CandidateScore", "TextClassifier", "run_automl"]
