"""Data validation of a function's dataset with Great Expectations.

Each check is a named GX expectation run on an ephemeral context (nothing written to disk). The checks
are blocking: training waits until the data passes them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    import pandas as pd

CHECK_NAMES = (
    "inputs_not_empty",
    "labels_in_label_set",
    "no_conflicting_duplicates",
    "enough_examples_per_label",
)


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    description: str
    details: dict[str, Any] = field(default_factory=dict)


class _Validator:
    """One ephemeral GX context (no files, no progress bars) validating dataframes in memory."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._context = gx.get_context(mode="ephemeral")
        self._context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self._source = self._context.data_sources.add_pandas("loopml")
        # one in-memory asset and batch definition for every frame (the frame is a batch parameter): adding them
        # per call wrote their config each time, a third of a validation's time
        self._batches = self._source.add_dataframe_asset("frames").add_batch_definition_whole_dataframe("all")
        self._lock = threading.Lock()

    def __call__(self, frame: pl.DataFrame, expectation: Any) -> dict[str, Any]:
        """Run one expectation against a dataframe; return success and GX's ``result`` dict."""
        return self.validate_pandas(frame.to_pandas(), expectation)

    def validate_pandas(self, frame: pd.DataFrame, expectation: Any) -> dict[str, Any]:
        with self._lock:  # GX's batch and validation objects are not documented as thread-safe
            batch = self._batches.get_batch(batch_parameters={"dataframe": frame})
            outcome = batch.validate(expectation, result_format="COMPLETE")
        return {"success": bool(outcome.success), "result": outcome.result}


_shared: _Validator | None = None
_shared_lock = threading.Lock()


def shared_validator() -> _Validator:
    """One validator per process: creating a GX context costs a few hundred milliseconds, so a process that
    validates often (or a warm run worker, before it forks) creates it once."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = _Validator()
        return _shared


def validate_dataset(dataset: pl.DataFrame, label_set: list[str], min_per_label: int) -> list[CheckResult]:
    """Validate a dataset (see ``loopml.dataset.build_dataset``) against the function's label set."""
    import great_expectations as gx

    expect = gx.expectations
    _validate = shared_validator()
    results: list[CheckResult] = []

    rows = dataset.select(["content_hash", "text_length", "label", "task_id"])
    non_empty = _validate(rows, expect.ExpectColumnValuesToBeBetween(column="text_length", min_value=1))
    empty_tasks = rows.filter(pl.col("text_length") < 1)["task_id"].to_list()
    results.append(
        CheckResult(
            "inputs_not_empty",
            non_empty["success"] and not dataset.is_empty(),
            "every labelled input has non-blank text or is a readable image"
            if not dataset.is_empty()
            else "the dataset is empty",
            {"empty_inputs": len(empty_tasks), "task_ids": empty_tasks[:20], "rows": dataset.height},
        )
    )

    in_set = _validate(rows, expect.ExpectColumnValuesToBeInSet(column="label", value_set=list(label_set)))
    outside = rows.filter(~pl.col("label").is_in(label_set))
    results.append(
        CheckResult(
            "labels_in_label_set",
            in_set["success"],
            f"every label is one of {label_set}",
            {
                "unexpected_labels": sorted(set(outside["label"].to_list())),
                "task_ids": outside["task_id"].to_list()[:20],
            },
        )
    )

    pairs = rows.unique(subset=["content_hash", "label"])
    unique = _validate(pairs, expect.ExpectColumnValuesToBeUnique(column="content_hash"))
    conflicts = pairs.group_by("content_hash").agg(pl.col("task_id"), pl.len().alias("n")).filter(pl.col("n") > 1)
    results.append(
        CheckResult(
            "no_conflicting_duplicates",
            unique["success"],
            "no identical inputs carry different labels",
            {
                "conflicting_inputs": conflicts.height,
                "task_ids": [ids for ids in conflicts["task_id"].to_list()[:10]],
            },
        )
    )

    counts = (
        pl.DataFrame({"label": list(label_set)})
        .join(rows.group_by("label").agg(pl.len().cast(pl.Int64).alias("count")), on="label", how="left")
        .with_columns(pl.col("count").fill_null(0))
    )
    enough = _validate(counts, expect.ExpectColumnValuesToBeBetween(column="count", min_value=min_per_label))
    short = counts.filter(pl.col("count") < min_per_label)
    results.append(
        CheckResult(
            "enough_examples_per_label",
            enough["success"],
            f"each label has at least {min_per_label} examples",
            {
                "counts": dict(zip(counts["label"].to_list(), counts["count"].to_list(), strict=True)),
                "labels_short": short["label"].to_list(),
            },
        )
    )
    return results
