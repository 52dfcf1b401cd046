"""Registered model versions in the BentoML model store under ``LOOPML_HOME/bentoml``.

A version is ``<function>:v<N>``: N counts up per function, so versions read in order.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml.config import Settings

if TYPE_CHECKING:
    from loopml.automl import TextClassifier

VERSION_PATTERN = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class ModelVersion:
    tag: str
    function: str
    version: str
    metadata: dict[str, Any]
    path: Path


def _bentoml(settings: Settings) -> Any:
    """Import BentoML with its home inside LOOPML_HOME (tracking off)."""
    os.environ.setdefault("BENTOML_HOME", str(settings.bentoml_home))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    import bentoml

    return bentoml


def model_store(settings: Settings) -> Any:
    """The model store of these settings, explicitly, whatever BENTOML_HOME this process started with."""
    _bentoml(settings)
    from bentoml._internal.models.model import ModelStore

    path = settings.bentoml_home / "models"
    path.mkdir(parents=True, exist_ok=True)
    return ModelStore(path)


def list_versions(settings: Settings, function: str) -> list[ModelVersion]:
    """Registered versions of a function, oldest first."""
    bentoml = _bentoml(settings)
    versions = []
    try:
        models = bentoml.models.list(function, _model_store=model_store(settings))
    except bentoml.exceptions.NotFound:
        return []
    for model in models:
        match = VERSION_PATTERN.match(model.tag.version or "")
        if match:
            versions.append((int(match.group(1)), model))
    return [
        ModelVersion(str(m.tag), function, m.tag.version, dict(m.info.metadata), Path(m.path))
        for _, m in sorted(versions, key=lambda item: item[0])
    ]


def save_model(settings: Settings, function: str, classifier: TextClassifier, metadata: dict[str, Any]) -> ModelVersion:
    """Register ``classifier`` as the next version of ``function``. Entries of ``metadata`` that are ``None`` (a
    holdout accuracy without holdout items, say) are left out: BentoML's metadata has no null."""
    metadata = {key: value for key, value in metadata.items() if value is not None}
    bentoml = _bentoml(settings)
    store = model_store(settings)
    existing = list_versions(settings, function)
    number = int(existing[-1].version[1:]) + 1 if existing else 1
    while True:
        tag = f"{function}:v{number}"
        try:
            with bentoml.models.create(
                tag,
                labels={"function": function, "framework": "loopml"},
                metadata=metadata,
                _model_store=store,
            ) as model:
                classifier.save(Path(model.path) / "classifier")
            break
        except bentoml.exceptions.BentoMLException as error:
            if "already exists" not in str(error):
                raise
            number += 1
    return ModelVersion(tag, function, f"v{number}", metadata, Path(bentoml.models.get(tag, _model_store=store).path))


def load_classifier(settings: Settings, tag: str) -> TextClassifier:
    """The classifier of version ``tag``: the AutoML's (:class:`loopml.automl.TextClassifier`) or, for a version of
    a deep tier, a :class:`loopml.automl.deep.DeepImageClassifier` (images) or a
    :class:`loopml.automl.text_deep.TextDeepClassifier` (texts), with the same ``predict_proba`` interface."""
    from loopml.automl import TextClassifier

    bentoml = _bentoml(settings)
    model = bentoml.models.get(tag, _model_store=model_store(settings))
    path = Path(model.path) / "classifier"
    if (path / "tail.pt").exists():  # a deep tier's version: its model.json names which
        from loopml.automl.text_deep import TEXT_DEEP_FORMAT, TextDeepClassifier

        if json.loads((path / "model.json").read_text(encoding="utf-8")).get("format") == TEXT_DEEP_FORMAT:
            return TextDeepClassifier.load(path)  # type: ignore[return-value]
        from loopml.automl.deep import DeepImageClassifier

        return DeepImageClassifier.load(path)  # type: ignore[return-value]
    return TextClassifier.load(path)


def version_path(settings: Settings, tag: str) -> Path:
    """The folder of a registered version (its classifier, metadata and ``oof_proba.parquet``)."""
    bentoml = _bentoml(settings)
    return Path(bentoml.models.get(tag, _model_store=model_store(settings)).path)
