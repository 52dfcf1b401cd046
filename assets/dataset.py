"""dataset: validated, de-duplicated, hash-split training data (Great Expectations checks, blocking)."""


from collections.abc import Iterator

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MetadataValue,
    Output,
    asset,
)

from assets.partitions import functions_partitions
from assets.resources import LoopMLResource
from loopml.dataset import build_dataset
from loopml.validation import CHECK_NAMES, validate_dataset

CHECK_DESCRIPTIONS = {
    "inputs_not_empty": "Every labelled input has non-blank text.",
    "labels_in_label_set": "Every label belongs to the function's current label set.",
    "no_conflicting_duplicates": "No identical inputs carry different labels.",
    "enough_examples_per_label": "Each label has enough examples to train (LOOPML_MIN_EXAMPLES_PER_LABEL).",
}


@asset(
    partitions_def=functions_partitions,
    group_name="annotate",
    io_manager_key="loopml_io",
    kinds={"great_expectations", "polars"},
    check_specs=[
        AssetCheckSpec(name, asset="dataset", blocking=True, description=CHECK_DESCRIPTIONS[name])
        for name in CHECK_NAMES
    ],
)
def dataset(
    context: AssetExecutionContext, loopml: LoopMLResource, annotations: pl.DataFrame
) -> Iterator[Output[pl.DataFrame] | AssetCheckResult]:
    """One row per labelled item: content hash, resolved label, source, stable train/holdout split.

    Validated with Great Expectations; each validation is a blocking asset check, so a failing check stops
    training until the data is fixed in Label Studio.
    """
    settings = loopml.settings()
    spec = loopml.registry().get(context.partition_key)
    data = build_dataset(annotations)
    counts = data.group_by("label").agg(pl.len()).sort("label")
    yield Output(
        data,
        metadata={
            "rows": data.height,
            "train_rows": data.filter(pl.col("split") == "train").height,
            "holdout_rows": data.filter(pl.col("split") == "holdout").height,
            "label_set": MetadataValue.json(spec.labels),
            "label_counts": MetadataValue.json(dict(zip(counts["label"], counts["len"], strict=True))),
            "sources": MetadataValue.json(data["source"].value_counts().to_dicts()),
        },
    )
    for result in validate_dataset(data, spec.labels, settings.min_examples_per_label):
        yield AssetCheckResult(
            check_name=result.name,
            passed=result.passed,
            severity=AssetCheckSeverity.ERROR,
            description=result.description if result.passed else f"FAILED: {result.description}",
            metadata={
                key: MetadataValue.json(value) if isinstance(value, dict | list) else value
                for key, value in result.details.items()
            },
        )
