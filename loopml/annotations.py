"""Annotations as a table: incremental merge of what changed in Label Studio, and the disagreement rule.

The ``annotations`` table has one row per annotation (skipped tasks included, ``was_cancelled`` true):
task_id, annotation_id, text, label, was_cancelled, completed_by, created_at, updated_at, source, must_pass
(the annotator ticked "must pass": the deployment gate requires every new version to answer it right).

Disagreement rule (documented for users in the README): when several annotators labelled one task, the
label with the most votes wins; a tie goes to the most recently updated annotation among the tied labels.
Skipped annotations carry no vote; a task whose annotations are all skipped is not in the dataset.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import polars as pl

ANNOTATION_SCHEMA: dict[str, Any] = {
    "task_id": pl.Int64,
    "annotation_id": pl.Int64,
    "text": pl.String,
    "label": pl.String,
    "was_cancelled": pl.Boolean,
    "completed_by": pl.Int64,
    "created_at": pl.String,
    "updated_at": pl.String,
    "source": pl.String,
    "must_pass": pl.Boolean,
}


@dataclass(frozen=True)
class PulledTask:
    """A task as read from Label Studio, with all of its current annotations."""

    task_id: int
    text: str | None
    updated_at: str
    annotations: list[dict[str, Any]]
    source: str = "annotation"


def empty_annotations() -> pl.DataFrame:
    return pl.DataFrame(schema=ANNOTATION_SCHEMA)


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """A stored annotations table brought to the current schema (columns added later get defaults)."""
    missing = [
        pl.lit(False if dtype == pl.Boolean else None, dtype=dtype).alias(name)
        for name, dtype in ANNOTATION_SCHEMA.items()
        if name not in frame.columns
    ]
    return frame.with_columns(missing).select(list(ANNOTATION_SCHEMA)) if missing else frame


def tasks_to_rows(tasks: Iterable[PulledTask]) -> pl.DataFrame:
    rows = [
        {
            "task_id": task.task_id,
            "annotation_id": ann["annotation_id"],
            "text": task.text,
            "label": ann.get("label"),
            "was_cancelled": bool(ann.get("was_cancelled", False)),
            "completed_by": ann.get("completed_by"),
            "created_at": ann.get("created_at", ""),
            "updated_at": ann.get("updated_at", ""),
            "source": task.source,
            "must_pass": bool(ann.get("must_pass", False)),
        }
        for task in tasks
        for ann in task.annotations
    ]
    return pl.DataFrame(rows, schema=ANNOTATION_SCHEMA) if rows else empty_annotations()


def merge_annotations(
    previous: pl.DataFrame,
    changed: list[PulledTask],
    annotated_task_ids: set[int] | None = None,
) -> pl.DataFrame:
    """The new annotations table: each changed task's rows replace its old ones (edits and deletions).

    ``annotated_task_ids``, when given, is the set of tasks that still have annotations in Label Studio;
    rows of any other task are dropped (their annotations were deleted).
    """
    changed_ids = [task.task_id for task in changed]
    kept = conform(previous).filter(~pl.col("task_id").is_in(changed_ids))
    if annotated_task_ids is not None:
        kept = kept.filter(pl.col("task_id").is_in(list(annotated_task_ids)))
    merged = pl.concat([kept, tasks_to_rows(changed)], how="vertical")
    return merged.sort(["task_id", "annotation_id"])


def resolve_labels(annotations: pl.DataFrame) -> pl.DataFrame:
    """One row per task: the winning label by the disagreement rule, with vote counts and annotators."""
    votes = annotations.filter(~pl.col("was_cancelled") & pl.col("label").is_not_null())
    if votes.is_empty():
        return pl.DataFrame(
            schema={
                "task_id": pl.Int64,
                "text": pl.String,
                "label": pl.String,
                "source": pl.String,
                "n_annotations": pl.UInt32,
                "agreement": pl.Float64,
                "labelled_at": pl.String,
                "must_pass": pl.Boolean,
            }
        )
    per_label = votes.group_by(["task_id", "label"]).agg(
        pl.len().alias("votes"), pl.col("updated_at").max().alias("last_vote_at")
    )
    winners = (
        per_label.sort(["task_id", "votes", "last_vote_at"], descending=[False, True, True])
        .group_by("task_id", maintain_order=True)
        .first()
    )
    totals = votes.group_by("task_id").agg(
        pl.col("text").first(),
        pl.col("source").first(),
        pl.len().alias("n_annotations"),
        pl.col("updated_at").max().alias("labelled_at"),
        pl.col("must_pass").any().alias("must_pass"),
    )
    return (
        winners.join(totals, on="task_id")
        .with_columns((pl.col("votes") / pl.col("n_annotations")).alias("agreement"))
        .select(["task_id", "text", "label", "source", "n_annotations", "agreement", "labelled_at", "must_pass"])
        .sort("task_id")
    )
