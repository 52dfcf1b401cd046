"""model: AutoML over cached embeddings and raw text; the winner registered in the BentoML model store."""

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, MetadataValue, Output, TableColumn, TableRecord, TableSchema, asset

from assets.partitions import functions_partitions
from assets.preannotations import unlabelled_items_path
from assets.resources import LoopMLResource
from loopml.dataset import training_rows
from loopml.features import FeatureCache, unlabelled_embeddings

MIN_TRAIN_EXAMPLES = 2  # per label in the training split, for cross-validation


def _leaderboard_table(leaderboard: list[Any]) -> MetadataValue:
    schema = TableSchema(
        columns=[
            TableColumn("candidate", "string"),
            TableColumn("params", "string"),
            TableColumn("cv_accuracy", "float"),
            TableColumn("cv_macro_f1", "float"),
            TableColumn("cv_log_loss", "float"),
            TableColumn("fit_seconds", "float"),
        ]
    )
    records = [
        TableRecord(
            {
                "candidate": c.name,
                "params": str(c.params),
                "cv_accuracy": round(c.cv_accuracy, 4),
                "cv_macro_f1": round(c.cv_macro_f1, 4),
                "cv_log_loss": round(c.cv_log_loss, 4),
                "fit_seconds": round(c.fit_seconds, 3),
            }
        )
        for c in leaderboard
    ]
    return MetadataValue.table(records, schema=schema)


def _confusion_markdown(labels: list[str], confusion: list[list[int]]) -> MetadataValue:
    header = "| annotated \\ predicted | " + " | ".join(labels) + " |"
    rule = "|---" * (len(labels) + 1) + "|"
    rows = [
        f"| **{label}** | " + " | ".join(str(v) for v in row) + " |"
        for label, row in zip(labels, confusion, strict=True)
    ]
    return MetadataValue.md("\n".join([header, rule, *rows]))


@asset(
    partitions_def=functions_partitions,
    group_name="train",
    io_manager_key="loopml_io",
    output_required=False,
    kinds={"pytorch", "scikitlearn", "bentoml"},
)
def model(
    context: AssetExecutionContext,
    loopml: LoopMLResource,
    dataset: pl.DataFrame,
    features: pl.DataFrame,
) -> Iterator[Output[dict[str, Any]]]:
    """AutoML: linear and MLP heads (Lightning) on embeddings, TF-IDF linear model, and their ensemble.

    The embedding heads train in the principal directions of all the function's items: the dataset's and
    the unlabelled tasks' embeddings recorded by ``preannotations`` (with few labels the minor directions are
    noise; see ``loopml.automl.basis``). Stratified k-fold cross-validation picks the winner, temperature
    scaling calibrates it, and it is refit on the training split and registered in the BentoML model store
    as the function's next version. The holdout split is never trained on; it is scored here and kept for the
    deployment gate. While fewer than two labels have ``MIN_TRAIN_EXAMPLES`` in the training split (a young
    function whose examples fell in the holdout), training waits: no version, the run stays green.
    """
    from loopml.automl import run_automl
    from loopml.automl.metrics import expected_calibration_error
    from serving.model_store import save_model

    settings = loopml.settings()
    spec = loopml.registry().get(context.partition_key)
    started = time.perf_counter()

    rows = training_rows(dataset, spec.labels).join(features, on="content_hash", how="left")
    train = rows.filter(pl.col("split") == "train")
    holdout = rows.filter(pl.col("split") == "holdout")
    in_train = {row["label"]: row["count"] for row in train["label"].value_counts().to_dicts()}
    in_all = {row["label"]: row["count"] for row in rows["label"].value_counts().to_dicts()}
    label_set = [
        label
        for label in spec.labels
        if in_train.get(label, 0) >= MIN_TRAIN_EXAMPLES and in_all.get(label, 0) >= settings.min_examples_per_label
    ]
    left_out = [label for label in spec.labels if label not in label_set]
    if len(label_set) < 2:
        context.log.info(
            f"{spec.name}: training waits for more examples; in the training split {in_train} (each label needs "
            f"{MIN_TRAIN_EXAMPLES} there and {settings.min_examples_per_label} in all, and two labels must)"
        )
        return
    if left_out:
        context.log.warning(
            f"labels {left_out} have fewer than {settings.min_examples_per_label} examples (or fewer than "
            f"{MIN_TRAIN_EXAMPLES} in the training split) and are left out of this version; label more examples "
            "of them in Label Studio"
        )
        train = train.filter(pl.col("label").is_in(label_set))
    embeddings = np.asarray(train["embedding"].to_list(), dtype=np.float32)
    unlabelled = unlabelled_embeddings(
        unlabelled_items_path(settings.data_dir, spec.name),
        FeatureCache(settings.features_dir, spec.encoder_id),
        exclude=set(dataset["content_hash"].to_list()),
    )
    result = run_automl(
        train["text"].to_list(),
        embeddings,
        train["label"].to_list(),
        label_set,
        unlabelled_embeddings=unlabelled,
        text_candidates=spec.input_type == "text",  # no TF-IDF model of an image's data URI
    )
    result.model.encoder_id = spec.encoder_id
    train_seconds = time.perf_counter() - started

    holdout_accuracy: float | None = None
    if holdout.height:
        probs = result.model.predict_proba(
            holdout["text"].to_list(), np.asarray(holdout["embedding"].to_list(), dtype=np.float32)
        )
        predicted = [result.label_set[i] for i in probs.argmax(axis=1)]
        holdout_accuracy = float(np.mean([p == t for p, t in zip(predicted, holdout["label"], strict=True)]))

    label_index = {label: i for i, label in enumerate(result.label_set)}
    cv_ece = expected_calibration_error(result.oof_proba, np.asarray([label_index[v] for v in train["label"]]))
    metrics: dict[str, Any] = {
        "cv_accuracy": round(result.cv_accuracy, 4),
        "cv_ece": round(cv_ece, 4),
        "cv_macro_f1": round(result.cv_macro_f1, 4),
        "holdout_accuracy": round(holdout_accuracy, 4) if holdout_accuracy is not None else None,
        "train_rows": train.height,
        "holdout_rows": holdout.height,
        "winner": result.winner.name,
        "winner_params": result.winner.params,
        "temperature": round(float(result.temperature), 4),
        "label_set": result.label_set,
        "labels_left_out": left_out,
        "encoder": spec.encoder_id,
        "unlabelled_items": 0 if unlabelled is None else len(unlabelled),
        # the dimensions the embedding heads trained on: a principal basis (see loopml.automl.basis) or all
        "feature_dims": result.basis_size or int(embeddings.shape[1]),
        "per_label": result.per_label,
        "train_seconds": round(train_seconds, 3),
        "dagster_run_id": context.run_id,
    }
    version = save_model(settings, spec.name, result.model, metrics)
    oof = pl.DataFrame(
        {
            "content_hash": train["content_hash"],
            "label": train["label"],
            **{f"p_{label}": result.oof_proba[:, i] for i, label in enumerate(result.label_set)},
        }
    )
    oof.write_parquet(version.path / "oof_proba.parquet")
    register_seconds = time.perf_counter() - started - train_seconds

    yield Output(
        {"tag": version.tag, "version": version.version, **metrics},
        metadata={
            "model_version": version.tag,
            "cv_accuracy": result.cv_accuracy,
            "cv_macro_f1": result.cv_macro_f1,
            "holdout_accuracy": holdout_accuracy if holdout_accuracy is not None else float("nan"),
            "cv_ece": cv_ece,
            "labelled_items": train.height + holdout.height,
            # one number per label, so that Dagster plots each across materializations
            **{f"f1_{label}": scores["f1"] for label, scores in result.per_label.items()},
            "winner": result.winner.name,
            "leaderboard": _leaderboard_table(result.leaderboard),
            "per_label": MetadataValue.json(result.per_label),
            "confusion_matrix": _confusion_markdown(result.label_set, result.confusion),
            "label_set": MetadataValue.json(result.label_set),
            "encoder": spec.encoder_id,
            "feature_basis": (
                f"{result.basis_size} principal directions of {train.height + len(unlabelled)} items"
                if result.basis_size is not None and unlabelled is not None
                else "all dimensions"
            ),
            "temperature": float(result.temperature),
            "train_rows": train.height,
            "train_seconds": round(train_seconds, 3),
            "register_seconds": round(register_seconds, 3),
        },
    )
