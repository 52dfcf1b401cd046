"""deep_model: the image deep tier, a fine-tuned backbone tail kept only when cross-validation says it is better."""

import time
from typing import Any

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from assets.partitions import functions_partitions
from assets.resources import LoopMLResource
from loopml.dataset import training_rows


def _not_selected(context: AssetExecutionContext, reason: str, **figures: Any) -> Output[dict[str, Any]]:
    context.log.info(f"{context.partition_key}: no deep version: {reason}")
    return Output({"selected": False, "reason": reason, **figures}, metadata={"selected": False, "reason": reason})


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
    """Deep tier of an image function (see ``loopml.automl.deep``): EfficientNet-Lite0's last block and head
    convolution fine-tuned with a new classifier (Lightning; augmented views; frozen batch statistics), on the
    training split of the AutoML ``model``'s labels, within ``LOOPML_DEEP_TIME_BUDGET_S`` (default 600) on the
    CPU, on the GPU when there is one.

    It runs in its own job (``train_deep_function``: nightly, or by hand), never in the seconds-long loop. Its
    out-of-fold answers are compared, item by item, with those of the AutoML run again on the same folds (the same
    items, embeddings and split: seconds); only a gain of more than two standard errors registers it as the
    function's next version (its own
    torch model: the tail's weights, a few MB), which ``deep_deployment`` gates and rolls out as a canary like any
    other. Text functions, and image functions with fewer than ``LOOPML_DEEP_MIN_PER_CLASS`` (default 32) labels
    per class, are skipped with the reason.
    """
    from loopml.automl import run_automl
    from loopml.automl.deep import CANDIDATE, DeepConfig, compare_out_of_fold, fit_deep_candidate
    from loopml.encoders import get_encoder
    from serving.model_store import save_model

    settings = loopml.settings()
    spec = loopml.registry().get(context.partition_key)
    if spec.input_type != "image":
        return _not_selected(context, f"the deep tier fine-tunes image backbones; {spec.name} classifies texts")
    config = DeepConfig.from_env()
    label_set = list(model["label_set"])
    train = training_rows(dataset, label_set).filter(pl.col("split") == "train")
    counts = {row["label"]: row["count"] for row in train["label"].value_counts().to_dicts()}
    fewest = min(counts.get(label, 0) for label in label_set)
    if fewest < config.min_per_class:
        return _not_selected(
            context,
            f"waits for {config.min_per_class} labels per class in the training split (fewest now: {fewest}; "
            "LOOPML_DEEP_MIN_PER_CLASS)",
        )
    train = train.join(features.select("content_hash", "embedding"), on="content_hash", how="inner")

    started = time.perf_counter()
    result = fit_deep_candidate(
        get_encoder(spec.encoder_id), train["text"].to_list(), train["label"].to_list(), label_set, config
    )
    seconds = time.perf_counter() - started
    automl = run_automl(  # the AutoML procedure on the deep tier's folds: a paired comparison, item by item
        train["content_hash"].to_list(),
        np.asarray(train["embedding"].to_list(), dtype=np.float32),
        train["label"].to_list(),
        label_set,
        folds=config.folds,
        seed=config.seed,
        encoder_id=spec.encoder_id,
        text_candidates=False,
    )
    truth = np.asarray(train["label"].to_list())
    deep_correct = np.asarray([label_set[int(k)] for k in result.oof_proba.argmax(axis=1)]) == truth
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
        "epochs": result.epochs,
        "memory_bytes": result.model.memory_bytes(),
        "temperature": round(result.temperature, 4),
        "device": get_encoder(spec.encoder_id).device,  # type: ignore[attr-defined]
    }
    metadata = {
        **{k: v for k, v in figures.items() if k != "epochs"},
        "epochs": str(result.epochs),
        "seconds": MetadataValue.json({k: round(v, 1) for k, v in result.seconds.items()}),
        "comparison": comparison.reason,
    }
    if not comparison.better:
        context.log.info(f"{spec.name}: {comparison.reason}")
        return Output({"selected": False, "reason": comparison.reason, **figures}, metadata=metadata)
    version = save_model(
        settings,
        spec.name,
        result.model,  # type: ignore[arg-type]
        {
            **figures,
            "cv_accuracy": round(result.cv_accuracy, 4),
            "winner": CANDIDATE,
            "label_set": label_set,
            "encoder": spec.encoder_id,
            "dagster_run_id": context.run_id,
        },
    )
    pl.DataFrame(
        {
            "content_hash": train["content_hash"],
            "label": train["label"],
            **{f"p_{label}": result.oof_proba[:, i] for i, label in enumerate(label_set)},
        }
    ).write_parquet(version.path / "oof_proba.parquet")
    context.log.info(f"{spec.name}: {version.tag} registered: {comparison.reason}")
    return Output(
        {"selected": True, "tag": version.tag, "version": version.version, "label_set": label_set, **figures},
        metadata={**metadata, "selected": True, "model_version": version.tag},
    )
