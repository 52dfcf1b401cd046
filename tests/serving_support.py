"""Helpers for the serving tests: real tiny models (MiniLM embeddings + AutoML) in the model store."""

from __future__ import annotations

from functools import lru_cache

from loopml.automl import TextClassifier, run_automl
from loopml.config import Settings
from loopml.encoders import get_encoder
from loopml.functions import FunctionRegistry, FunctionSpec

POSITIVE = [
    "great movie, loved it",
    "wonderful acting and a moving story",
    "a delight from start to finish",
    "brilliant and funny",
    "I enjoyed every minute",
    "superb direction and a clever script",
    "charming and warm",
    "a joyful little masterpiece",
]
NEGATIVE = [
    "boring and far too long",
    "terrible acting, awful script",
    "a complete waste of time",
    "dull and lifeless",
    "I hated every minute",
    "a poorly made mess",
    "tedious and predictable",
    "an ugly, stupid film",
]
LABELS = ["positive", "negative"]


@lru_cache(maxsize=1)
def tiny_classifier() -> TextClassifier:
    """A real TextClassifier trained on 16 reviews (about 1 s)."""
    texts = POSITIVE + NEGATIVE
    labels = ["positive"] * len(POSITIVE) + ["negative"] * len(NEGATIVE)
    embeddings = get_encoder().encode(texts)
    return run_automl(texts, embeddings, labels, LABELS, folds=3).model


def register(settings: Settings, name: str, labels: list[str] | None = None) -> None:
    registry = FunctionRegistry(settings)
    if name not in registry.names():
        registry.add(FunctionSpec(name, "text", list(labels or LABELS), get_encoder().id))


def save_versions(settings: Settings, function: str, count: int) -> list[str]:
    """Register ``function`` and save ``count`` versions of the tiny model; returns their tags."""
    from serving.model_store import save_model

    register(settings, function)
    model = tiny_classifier()
    return [save_model(settings, function, model, {"note": "test"}).tag for _ in range(count)]
