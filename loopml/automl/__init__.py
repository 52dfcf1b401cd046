"""AutoML over cached embeddings and raw text: batched heads, k-fold CV, calibration, a deployable winner.

``run_automl(texts, embeddings, labels, label_set)`` cross-validates embedding heads (logistic regression and
an MLP, trained together in one PyTorch Lightning fit), Complement Naive Bayes on word 1-2 gram TF-IDF and an
ensemble of the best of both, calibrates each with a temperature fitted on out-of-fold logits, picks the
winner by calibrated out-of-fold log loss among the default linear head and the candidates that beat it
clearly (in standard errors of the paired difference) and refits it on all rows as a :class:`TextClassifier`
(``predict_proba``, ``save``, ``load``). See :mod:`loopml.automl.search`.
"""

from .classifier import TextClassifier
from .search import AutoMLResult, CandidateScore, run_automl

__all__ = ["AutoMLResult", "CandidateScore", "TextClassifier", "run_automl"]
