"""Helpers for the serving tests: real tiny models (MiniLM embeddings + AutoML) in the model store."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

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


IMAGE_ENCODER = "efficientnet-lite0-112"  # the fast image encoder: the tests train and serve on it
IMAGE_LABELS = ["light", "dark"]


def png(level: int, size: tuple[int, int] = (40, 32), seed: int = 0, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    """An image file (``fmt``, PNG by default) of ``size`` pixels around grey ``level`` (0-255), with a little
    noise (``seed``), in colour ``mode``."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(level + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


@lru_cache(maxsize=1)
def tiny_image_classifier() -> TextClassifier:
    """A real classifier of light vs dark images (EfficientNet-Lite0 at 112 px + AutoML's embedding heads)."""
    formats = ("PNG", "JPEG", "WEBP")
    images = [png(250 - i * 2, seed=i, fmt=formats[i % 3]) for i in range(30)]
    images += [png(5 + i * 2, seed=100 + i, fmt=formats[i % 3]) for i in range(30)]
    labels = ["light"] * 30 + ["dark"] * 30
    embeddings = get_encoder(IMAGE_ENCODER).encode(images)
    return run_automl(
        [f"image-{i}" for i in range(len(images))],
        embeddings,
        labels,
        IMAGE_LABELS,
        folds=3,
        encoder_id=IMAGE_ENCODER,
        text_candidates=False,
    ).model


def save_image_versions(settings: Settings, function: str, count: int = 1) -> list[str]:
    """Register image function ``function`` and save ``count`` versions of the tiny image model."""
    from serving.model_store import save_model

    registry = FunctionRegistry(settings)
    if function not in registry.names():
        registry.add(FunctionSpec(function, "image", list(IMAGE_LABELS), IMAGE_ENCODER))
    model = tiny_image_classifier()
    return [save_model(settings, function, model, {"note": "test"}).tag for _ in range(count)]


def serving_asgi_app() -> Any:
    """The serving API's ASGI app (``LoopML.to_asgi()``), ready to start in this process again: BentoML registers
    its HTTP metrics in Prometheus' process-wide registry when an app starts, so the metrics of an app that an
    earlier test module started are unregistered first (else the second start fails: duplicated timeseries)."""
    import prometheus_client

    from serving.service import LoopML

    registry = prometheus_client.REGISTRY
    for collector, names in list(registry._collector_to_names.items()):
        if any(name.startswith("bentoml_") for name in names):
            registry.unregister(collector)
    return LoopML.to_asgi()
