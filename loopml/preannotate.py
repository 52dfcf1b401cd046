"""Pre-annotations: the serving model's answer on every unlabelled task, so annotators confirm instead of type.

Scores come from the function's primary version (the one answering most traffic); embeddings of task texts are
read from, and added to, the feature cache, so a later promotion re-scores without re-encoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from loopml.dataset import content_hash
from loopml.features import FeatureCache
from loopml.labelstudio import Prediction, TaskRecord


@dataclass(frozen=True)
class PreannotationResult:
    predictions: list[Prediction]
    newly_embedded: int

    def label_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.predictions:
            counts[p.label] = counts.get(p.label, 0) + 1
        return counts


def predict_tasks(
    tasks: Sequence[TaskRecord],
    predict_proba: Callable[[list[str], np.ndarray], np.ndarray],
    label_set: Sequence[str],
    model_version: str,
    cache: FeatureCache,
    encode: Callable[[list[str]], np.ndarray],
) -> PreannotationResult:
    """One :class:`Prediction` per task with text: the top label and its calibrated probability."""
    usable = [t for t in tasks if str(t.data.get("text") or "").strip()]
    if not usable:
        return PreannotationResult([], 0)
    texts = [str(t.data["text"]) for t in usable]
    embeddings, new = cache.embed([content_hash(t) for t in texts], texts, encode)
    proba = np.asarray(predict_proba(texts, embeddings.astype(np.float32)))
    best = proba.argmax(axis=1)
    predictions = [
        Prediction(task.task_id, label_set[int(i)], float(proba[row, i]), model_version)
        for row, (task, i) in enumerate(zip(usable, best, strict=True))
    ]
    return PreannotationResult(predictions, int(new))
