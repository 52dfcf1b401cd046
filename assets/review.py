"""review_set: live calls a human should look at, sent to Label Studio with the model's answer and a reason."""

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, AssetKey, MetadataValue, Output, asset

from assets.io_manager import asset_path
from assets.partitions import functions_partitions
from assets.resources import LoopMLResource, retried_when_labelstudio_is_down
from loopml.functions import input_key
from loopml.labelstudio import PREFILLED_META, choice_result
from loopml.report_links import reports_dir, signed_url
from loopml.review_report import write_review_summary

BUDGET_TAG = "loopml/review_budget"  # set by the drift sensor to raise the budget of the current period
SINCE_TAG = "loopml/review_since"  # set by the drift sensor: resample the drifted window
DEFAULT_WINDOW = timedelta(days=1)  # the first sampling run looks this far back
MAX_CANDIDATES = 1_000_000
BUDGET_ENV = "LOOPML_REVIEW_BUDGET"  # calls sent for review per function and period (default 50)
BUDGETS_ENV = "LOOPML_REVIEW_BUDGETS"  # per-function budgets, e.g. "news-topic=100,review-sentiment=20"
PERIOD_ENV = "LOOPML_REVIEW_PERIOD_HOURS"  # the budget's period (default 1: the hourly sampling schedule)
CAPS_ENV = "LOOPML_REVIEW_CAPS"  # caps per reason over the defaults, e.g. "near_mistake=4,low_confidence=12"


def review_budget(function: str, tags: dict[str, str] | None = None) -> int:
    """The function's review budget for the current period: the drift sensor's raised budget, else its entry in
    ``LOOPML_REVIEW_BUDGETS``, else ``LOOPML_REVIEW_BUDGET`` (default 50)."""
    if tags and tags.get(BUDGET_TAG):
        return int(tags[BUDGET_TAG])
    for entry in os.environ.get(BUDGETS_ENV, "").split(","):
        name, _, value = entry.partition("=")
        if name.strip() == function and value.strip():
            return int(value)
    return int(os.environ.get(BUDGET_ENV, "50"))


def review_period() -> timedelta:
    return timedelta(hours=float(os.environ.get(PERIOD_ENV, "1")))


def _sent_in_period(context: AssetExecutionContext, period_start: datetime) -> int:
    """Calls this function sent for review by the sampling runs that ended after ``period_start``."""
    from dagster import AssetRecordsFilter

    records = context.instance.fetch_materializations(
        records_filter=AssetRecordsFilter(asset_key=AssetKey("review_set"), asset_partitions=[context.partition_key]),
        limit=1000,
    ).records
    sent = 0
    for record in records:
        metadata = record.asset_materialization.metadata
        end, pushed = metadata.get("window_end"), metadata.get("sent_to_labelstudio")
        if end is None or not end.value or datetime.fromisoformat(str(end.value)) < period_start:
            break  # newest first: the rest are older
        sent += int(pushed.value) if pushed is not None else 0
    return sent


def _previous_window_end(context: AssetExecutionContext) -> datetime | None:
    """Where the last sampling run of this function stopped (each call is considered once)."""
    from dagster import AssetRecordsFilter

    records = context.instance.fetch_materializations(
        records_filter=AssetRecordsFilter(asset_key=AssetKey("review_set"), asset_partitions=[context.partition_key]),
        limit=1,
    ).records
    if not records:
        return None
    value = records[0].asset_materialization.metadata.get("window_end")
    return datetime.fromisoformat(str(value.value)) if value is not None and value.value else None


def _training_mistakes(oof_path, features: pl.DataFrame, low_margin: float) -> np.ndarray:
    """Embeddings of training items the model got wrong or was unsure of out of fold (:func:`past_mistakes`):
    the 'past mistakes' to sample near."""
    from loopml.label_issues import read_oof
    from loopml.review import past_mistakes

    if not oof_path.exists():
        return np.zeros((0, 0), dtype=np.float32)
    ids, given, label_set, proba = read_oof(oof_path)
    index = {label: i for i, label in enumerate(label_set)}
    given_index = np.array([index.get(g, -1) for g in given], dtype=np.int64)
    wrong = np.flatnonzero(past_mistakes(given_index, np.asarray(proba), low_margin))
    wrong_ids = pl.DataFrame({"content_hash": [ids[i] for i in wrong]}, schema={"content_hash": pl.String})
    rows = wrong_ids.join(features, on="content_hash", how="inner")
    if rows.height == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return np.asarray(rows["embedding"].to_list(), dtype=np.float32)


def _training_embeddings(dataset: pl.DataFrame, features: pl.DataFrame) -> np.ndarray | None:
    """Embeddings of the labelled items: what the model was taught, for the 'unfamiliar inputs' reason."""
    rows = dataset.select("content_hash").unique().join(features, on="content_hash", how="inner")
    if rows.height == 0:
        return None
    return np.asarray(rows["embedding"].to_list(), dtype=np.float32)


def review_task(row: dict[str, Any], answered_by: str, primary: str | None, key: str = "text") -> dict[str, Any]:
    """A call sent for review as a Label Studio task: the answer it got pre-filled (with its score) and, when
    another version (a canary) answered, the serving primary's answer too, which the labelling UI shows (it
    pre-fills the project's model version). ``meta`` records which version's answer the task carries. ``key``:
    the function's input in the task's data (``text``, or ``image``: the logged thumbnail)."""
    predictions = [
        {
            "model_version": answered_by,
            "score": round(float(row["confidence"]), 4),
            "result": choice_result(str(row["label"]), to_name=key),
        }
    ]
    prefilled = answered_by
    if primary and answered_by != primary and row.get("primary_answer"):
        answer = choice_result(str(row["primary_answer"]), to_name=key)
        predictions.insert(0, {"model_version": primary, "result": answer})
        prefilled = primary
    return {
        "data": {key: row["input_text"], "review_reason": row["reason"]},
        "meta": {
            "loopml_source": "review",
            "loopml_reason": row["reason"],
            "invocation_id": row["invocation_id"],
            PREFILLED_META: prefilled,
        },
        "predictions": predictions,
    }


@asset(
    partitions_def=functions_partitions,
    group_name="review",
    io_manager_key="loopml_io",
    deps=["invocations"],
    kinds={"labelstudio", "polars", "scikitlearn"},
)
@retried_when_labelstudio_is_down
def review_set(
    context: AssetExecutionContext, loopml: LoopMLResource, dataset: pl.DataFrame, features: pl.DataFrame, model: dict
) -> Output[pl.DataFrame]:
    """Calls from the invocation log that a human should look at, each with its reason: flagged by users,
    primary/canary disagreement, unfamiliar inputs (far from every training example; while the model is
    young, most of the budget), near past mistakes (nearest neighbours of items the model got wrong or was
    unsure of), low confidence, rare classes, and a small random slice. A budget per function and period (what
    earlier runs of the period sent counts against it), caps per reason, no duplicates of tasks already in Label
    Studio. Pushed as tasks with the model's answer pre-filled and the reason in the
    Data Manager (`review_reason` column); once annotated they join the dataset with source `review`."""
    from loopml.dataset import input_hash
    from loopml.invocation_frames import load_serving_invocations
    from loopml.review import ReviewContext, ReviewPolicy, parse_caps, select_for_review
    from serving.model_store import version_path

    function = context.partition_key
    settings = loopml.settings()
    spec = loopml.registry().get(function)
    now = datetime.now(UTC)
    override = context.run.tags.get(SINCE_TAG)
    since = (datetime.fromisoformat(override) if override else None) or _previous_window_end(context)
    since = since or now - DEFAULT_WINDOW
    calls = load_serving_invocations(settings, function, since=since, limit=MAX_CANDIDATES)
    client = loopml.labelstudio()
    if spec.labelstudio_project_id is None:
        raise ValueError(f"function {function!r} has no Label Studio project")
    key = input_key(spec.input_type)
    texts = client.task_texts(spec.labelstudio_project_id, key=key).values()
    in_labelstudio = {input_hash(text, spec.input_type) for text in texts}
    counts = {r["label"]: int(r["count"]) for r in dataset["label"].value_counts().to_dicts()}
    period_budget = review_budget(function, dict(context.run.tags))
    sent_before = _sent_in_period(context, now - review_period())
    caps = {**ReviewPolicy().caps, **parse_caps(os.environ.get(CAPS_ENV, ""))}
    policy = ReviewPolicy(budget=max(0, period_budget - sent_before), caps=caps)
    oof = version_path(settings, model["tag"]) / "oof_proba.parquet"
    mistakes = _training_mistakes(oof, features, policy.low_margin)
    frame = calls.frame
    corrected = frame["flagged"] | (frame["true_label"].is_not_null() & (frame["true_label"] != frame["label"]))
    corrected_rows = np.flatnonzero(corrected.fill_null(False).to_numpy() & calls.has_embedding)
    if calls.embeddings.shape[1] and len(corrected_rows):
        extra = calls.embeddings[corrected_rows]
        mistakes = extra if mistakes.size == 0 else np.vstack([mistakes, extra])
    dim = calls.embeddings.shape[1] or (mistakes.shape[1] if mistakes.ndim == 2 else 0)
    selected = select_for_review(
        frame,
        calls.embeddings if calls.embeddings.size else np.zeros((frame.height, dim), dtype=np.float32),
        ReviewContext(
            training_label_counts=counts,
            mistake_embeddings=mistakes if mistakes.size else np.zeros((0, dim), dtype=np.float32),
            existing_hashes=frozenset(in_labelstudio | set(dataset["content_hash"].to_list())),
            training_embeddings=_training_embeddings(dataset, features),
            input_type=spec.input_type,
        ),
        policy,
    ).join(
        frame.select(
            pl.col("id").alias("invocation_id"), "answered_by", pl.col("primary_label").alias("primary_answer")
        ),
        on="invocation_id",
        how="left",
    )
    tasks = [review_task(r, str(r.get("answered_by") or model["tag"]), calls.primary, key) for r in selected.to_dicts()]
    pushed = client.import_tasks(spec.labelstudio_project_id, tasks) if tasks else 0
    reasons = {r["reason"]: int(r["count"]) for r in selected["reason"].value_counts().to_dicts()}
    stored = asset_path(settings.data_dir, "review_set", function, ".parquet")
    summary = write_review_summary(
        reports_dir(settings, function) / f"review-{now:%Y%m%dT%H%M%S}.html",
        function=function,
        model_tag=str(model["tag"]),
        window=(since, now),
        candidates=frame.height,
        sent=pushed,
        budget=policy.budget,
        reasons=reasons,
        rows=selected.to_dicts(),
        labelstudio_project_url=f"{settings.labelstudio_url}/projects/{spec.labelstudio_project_id}/data",
    )
    context.log.info(f"{function}: {pushed} calls sent for review from {frame.height} since {since:%Y-%m-%d %H:%M}")
    return Output(
        selected,
        metadata={
            "window_start": since.isoformat(),
            "window_end": now.isoformat(),
            "candidates": frame.height,
            "sent_to_labelstudio": pushed,
            "budget": policy.budget,
            "caps": MetadataValue.json(policy.caps),
            "period_budget": period_budget,
            "sent_earlier_in_period": sent_before,
            "reasons": MetadataValue.json(reasons),
            "stored_at": MetadataValue.path(str(stored)),
            # the round's summary page on the serving API, behind a signed link (loopml.report_links)
            "summary_url": MetadataValue.url(signed_url(settings, function, summary.name)),
            "sample": MetadataValue.md(
                "| reason | answer | confidence | text |\n|---|---|---|---|\n"
                + "\n".join(
                    f"| {r['reason']} | {r['label']} | {r['confidence']:.2f} | {str(r['input_text'])[:80]} |"
                    for r in selected.head(10).to_dicts()
                )
            ),
        },
    )
