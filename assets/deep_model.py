"""deep_model: a function's deep tier (a fine-tuned network), kept only when cross-validation says it is better."""

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from assets.partitions import functions_partitions
from assets.resources import LoopMLResource
from loopml.dataset import training_rows

TEXT_DEEP_ENV = "LOOPML_TEXT_DEEP"  # 1: text functions try the text deep tier too (off by default)
TEXT_DEEP_LAYERS_ENV = "LOOPML_TEXT_DEEP_LAYERS"  # MiniLM layers the text deep tier trains (default 6: all)
TEXT_DEEP_OFF = (
    f"the text deep tier is off ({TEXT_DEEP_ENV}=1 turns it on): measured by bench/text_deep_tier.py, it was no "
    "better than the AutoML model at 8 labels per class and 2.3 points better on RottenTomatoes at 32 (1.4 "
    "standard errors) for about 50 times the training time and 43 MB per version"
)


@dataclass
class _Candidate:
    """What either deep tier hands back for the comparison and the registration."""

    model: Any  # DeepImageClassifier or TextDeepClassifier
    oof_proba: np.ndarray | None
    cv_accuracy: float
    temperature: float
    device: str
    figures: dict[str, Any] = field(default_factory=dict)  # tier-specific, into the version's metadata
    details: dict[str, Any] = field(default_factory=dict)  # tier-specific, into the asset's metadata only


def _not_selected(context: AssetExecutionContext, reason: str, **figures: Any) -> Output[dict[str, Any]]:
    context.log.info(f"{context.partition_key}: no deep version: {reason}")
    return Output({"selected": False, "reason": reason, **figures}, metadata={"selected": False, "reason": reason})


def _image_candidate(encoder_id: str, train: pl.DataFrame, label_set: list[str], config: Any) -> _Candidate:
    from loopml.automl.deep import fit_deep_candidate
    from loopml.encoders import get_encoder

    encoder = get_encoder(encoder_id)
    result = fit_deep_candidate(encoder, train["text"].to_list(), train["label"].to_list(), label_set, config)
    return _Candidate(
        result.model,
        result.oof_proba,
        result.cv_accuracy,
        result.temperature,
        encoder.device,  # type: ignore[attr-defined]
        figures={"epochs": result.epochs},
        details={"seconds": {k: round(v, 1) for k, v in result.seconds.items()}},
    )


def _text_candidate(encoder_id: str, train: pl.DataFrame, label_set: list[str], config: Any) -> _Candidate:
    from loopml.automl.text_deep import fit_text_deep, shared_backbone
    from loopml.config import env_int

    result = fit_text_deep(
        train["text"].to_list(),
        train["label"].to_list(),
        label_set,
        seed=config.seed,
        folds=config.folds,
        time_budget_s=config.time_budget_s,
        train_layers=env_int(TEXT_DEEP_LAYERS_ENV, 6),
        encoder_id=encoder_id,
    )
    return _Candidate(
        result.model,
        result.oof_proba,
        float("nan") if result.cv_accuracy is None else result.cv_accuracy,
        result.temperature,
        shared_backbone().device,
        figures={
            "train_layers": result.model.train_layers,
            "pairs": result.pairs,
            "steps_run": result.steps_run,
            "steps_planned": result.steps_planned,
        },
        details={"seconds": {k: round(v, 1) for k, v in result.seconds.items()}},
    )


@asset(
    partitions_def=functions_partitions,
    group_name="train_deep",
    io_manager_key="loopml_io",
    kinds={"pytorch", "bentoml"},
)
def deep_model(
    context: AssetExecutionContext,
    loopml: LoopMLResource,
    dataset: pl.DataFrame,
    features: pl.DataFrame,
    model: dict[str, Any],
) -> Output[dict[str, Any]]:
    """Deep tier of a function, on the training split of the AutoML ``model``'s labels, within
    ``LOOPML_DEEP_TIME_BUDGET_S`` (default 600) on the CPU, on the GPU when there is one (Lightning):

    - images (``loopml.automl.deep``): EfficientNet-Lite0's last block and head convolution fine-tuned with a new
      classifier (augmented views; frozen batch statistics);
    - texts (``loopml.automl.text_deep``), only with ``LOOPML_TEXT_DEEP=1`` (off by default: see
      ``TEXT_DEEP_OFF``): all-MiniLM-L6-v2's last ``LOOPML_TEXT_DEEP_LAYERS`` (default 6) layers fine-tuned the
      SetFit way (same/different-label pairs, cosine-similarity loss), then a calibrated logistic regression.

    It runs in its own job (``train_deep_function``: nightly, or by hand), never in the seconds-long loop. Its
    out-of-fold answers (3 folds) are compared, item by item, with those of the AutoML run again
    on the same folds (the same items, embeddings and split: seconds); only a gain of more than two standard
    errors registers it as the function's next version (its own torch model: the trained layers and head, a few
    MB for images, 43 MB for six MiniLM layers), which ``deep_deployment`` gates and rolls out as a canary like
    any other. Functions with fewer than ``LOOPML_DEEP_MIN_PER_CLASS`` (default 32) labels per class are skipped
    with the reason.
    """
    from loopml.automl import run_automl
    from loopml.automl.deep import DeepConfig, compare_out_of_fold
    from loopml.config import env_flag
    from serving.model_store import save_model

    settings = loopml.settings()
    spec = loopml.registry().get(context.partition_key)
    if spec.input_type == "text" and not env_flag(TEXT_DEEP_ENV):
        return _not_selected(context, f"{spec.name} classifies texts and {TEXT_DEEP_OFF}")
    config = DeepConfig.from_env()
    label_set = list(model["label_set"])
    train = training_rows(dataset, label_set).filter(pl.col("split") == "train")
    counts = {row["label"]: row["count"] for row in train["label"].value_counts().to_dicts()}
    fewest = min(counts.get(label, 0) for label in label_set)
    if fewest < max(config.min_per_class, 2):
        return _not_selected(
            context,
            f"waits for {config.min_per_class} labels per class in the training split (fewest now: {fewest}; "
            "LOOPML_DEEP_MIN_PER_CLASS)",
        )
    train = train.join(features.select("content_hash", "embedding"), on="content_hash", how="inner")

    started = time.perf_counter()
    fit = _image_candidate if spec.input_type == "image" else _text_candidate
    candidate = fit(spec.encoder_id, train, label_set, config)
    seconds = time.perf_counter() - started
    if candidate.oof_proba is None:
        return _not_selected(context, "the deep candidate has no out-of-fold answers to compare (too few folds)")
    automl = run_automl(  # the AutoML procedure on the deep tier's folds: a paired comparison, item by item
        train["text"].to_list() if spec.input_type == "text" else train["content_hash"].to_list(),
        np.asarray(train["embedding"].to_list(), dtype=np.float32),
        train["label"].to_list(),
        label_set,
        folds=config.folds,
        seed=config.seed,
        encoder_id=spec.encoder_id,
        text_candidates=spec.input_type == "text",
    )
    truth = np.asarray(train["label"].to_list())
    deep_correct = np.asarray([label_set[int(k)] for k in candidate.oof_proba.argmax(axis=1)]) == truth
    automl_correct = np.asarray([automl.label_set[int(k)] for k in automl.oof_proba.argmax(axis=1)]) == truth
    comparison = compare_out_of_fold(deep_correct, automl_correct)
    figures: dict[str, Any] = {
        "compared_with": model["tag"],
        "deep_cv_accuracy": round(comparison.deep_accuracy, 4),
        "automl_cv_accuracy": round(comparison.automl_accuracy, 4),
        "gain": round(comparison.gain, 4),
        "standard_error": round(comparison.standard_error, 4),
        "train_rows": train.height,
        "train_seconds": round(seconds, 1),
        "memory_bytes": candidate.model.memory_bytes(),
        "temperature": round(candidate.temperature, 4),
        "device": candidate.device,
        **candidate.figures,
    }
    metadata = {
        **{k: v if isinstance(v, str | int | float) else str(v) for k, v in figures.items()},
        **{k: MetadataValue.json(v) for k, v in candidate.details.items()},
        "comparison": comparison.reason,
    }
    if not comparison.better:
        context.log.info(f"{spec.name}: {comparison.reason}")
        return Output({"selected": False, "reason": comparison.reason, **figures}, metadata=metadata)
    version = save_model(
        settings,
        spec.name,
        candidate.model,
        {
            **figures,
            "cv_accuracy": round(candidate.cv_accuracy, 4),
            "winner": candidate.model.candidate,
            "label_set": label_set,
            "encoder": spec.encoder_id,
            "dagster_run_id": context.run_id,
        },
    )
    pl.DataFrame(
        {
            "content_hash": train["content_hash"],
            "label": train["label"],
            **{f"p_{label}": candidate.oof_proba[:, i] for i, label in enumerate(label_set)},
        }
    ).write_parquet(version.path / "oof_proba.parquet")
    context.log.info(f"{spec.name}: {version.tag} registered: {comparison.reason}")
    return Output(
        {"selected": True, "tag": version.tag, "version": version.version, "label_set": label_set, **figures},
        metadata={**metadata, "selected": True, "model_version": version.tag},
    )
