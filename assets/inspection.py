"""label_issues: likely annotation errors, from the model's out-of-fold probabilities."""

from typing import Any

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from assets.io_manager import asset_path
from assets.partitions import functions_partitions
from assets.resources import LoopMLResource, retried_when_labelstudio_is_down
from loopml.functions import input_key
from loopml.labelstudio import Prediction

PUSH_TOP = 25  # suspected errors sent back to Label Studio per run
ISSUE_MODEL_VERSION = "label-issue"


def _top_markdown(issues: pl.DataFrame, limit: int = 15) -> MetadataValue:
    header = "| rank | task | text | annotated | model suggests | p(annotated) | reason |\n" + "|---" * 7 + "|"
    rows = [
        f"| {r['rank']} | {r['task_id']} | {str(r['text'])[:80].replace('|', '/')} | {r['given_label']} | "
        f"{r['suggested_label']} ({r['suggested_proba']:.2f}) | {r['given_label_proba']:.2f} | {r['reason']} |"
        for r in issues.head(limit).to_dicts()
    ]
    return MetadataValue.md("\n".join([header, *rows]) if rows else "no likely label errors")


def _holdout_probabilities(
    settings: Any, tag: str, encoder_id: str, dataset: pl.DataFrame, features: pl.DataFrame, label_set: list[str]
) -> tuple[list[str], list[str], np.ndarray]:
    """The holdout items (never trained on) as the model scores them: ``(content hashes, given labels,
    [n, C] probabilities in ``label_set`` order)``. Their errors matter twice: the gate scores versions on them."""
    from assets.deployment import version_probabilities
    from loopml.dataset import training_rows
    from serving.model_store import load_classifier

    rows = (
        training_rows(dataset, label_set)
        .filter(pl.col("split") == "holdout")
        .unique(subset="content_hash", keep="last")
        .join(features, on="content_hash", how="inner")
    )
    if rows.height == 0:
        return [], [], np.zeros((0, len(label_set)))
    classifier = load_classifier(settings, tag)
    embeddings = np.asarray(rows["embedding"].to_list(), dtype=np.float32)
    proba = version_probabilities(classifier, rows["text"].to_list(), embeddings, encoder_id)
    columns = [list(classifier.label_set).index(label) for label in label_set]
    return rows["content_hash"].to_list(), rows["label"].to_list(), np.asarray(proba)[:, columns]


@asset(
    partitions_def=functions_partitions,
    group_name="inspect",
    io_manager_key="loopml_io",
    kinds={"cleanlab", "labelstudio"},
)
@retried_when_labelstudio_is_down
def label_issues(
    context: AssetExecutionContext,
    loopml: LoopMLResource,
    model: dict,
    dataset: pl.DataFrame,
    features: pl.DataFrame,
) -> Output[pl.DataFrame]:
    """Items whose annotation is likely wrong: confident learning (cleanlab) on the model's out-of-fold
    probabilities of the training items and its probabilities of the holdout items (never trained on), plus
    items where the model confidently disagrees with the annotation. Ranked most suspect first; the top of the
    list goes back to Label Studio as a prediction with the model's suggestion (model version ``label-issue``),
    so a reviewer can filter for them in the Data Manager."""
    from loopml.label_issues import find_label_issues, read_oof, summarize
    from serving.model_store import version_path

    settings = loopml.settings()
    spec = loopml.registry().get(context.partition_key)
    ids, given, label_set, proba = read_oof(version_path(settings, model["tag"]) / "oof_proba.parquet")
    hold_ids, hold_given, hold_proba = _holdout_probabilities(
        settings, model["tag"], spec.encoder_id, dataset, features, label_set
    )
    found = find_label_issues(
        ids + hold_ids, given + hold_given, label_set, np.vstack([proba, hold_proba]) if hold_ids else proba
    )
    items = dataset.unique(subset="content_hash", keep="last").select("content_hash", "task_id", "text")
    issues = found.join(items, left_on="item_id", right_on="content_hash", how="left").sort("rank")

    pushed_file = asset_path(settings.data_dir, "label_issues_pushed", context.partition_key, ".parquet")
    pushed = (
        pl.read_parquet(pushed_file)
        if pushed_file.exists()
        else pl.DataFrame(schema={"task_id": pl.Int64, "suggested_label": pl.String})
    )
    to_push = (
        issues.filter(pl.col("task_id").is_not_null())
        .head(PUSH_TOP)
        .join(pushed, on=["task_id", "suggested_label"], how="anti")
    )
    if to_push.height and spec.labelstudio_project_id is not None:
        loopml.labelstudio().import_predictions(
            spec.labelstudio_project_id,
            [
                Prediction(
                    int(r["task_id"]),
                    r["suggested_label"],
                    float(r["score"]),
                    ISSUE_MODEL_VERSION,
                    to_name=input_key(spec.input_type),  # the Text or Image object of the project's config
                )
                for r in to_push.to_dicts()
            ],
        )
        pushed_file.parent.mkdir(parents=True, exist_ok=True)
        pl.concat([pushed, to_push.select(pl.col("task_id").cast(pl.Int64), "suggested_label")]).write_parquet(
            pushed_file
        )
    summary = summarize(found, len(ids) + len(hold_ids))
    return Output(
        issues,
        metadata={
            **{k: v for k, v in summary.items() if isinstance(v, int | float)},
            "model_version": model["tag"],
            "holdout_items": len(hold_ids),
            "sent_to_labelstudio": to_push.height,
            "top_issues": _top_markdown(issues),
        },
    )
