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
from loopml.evolution import removed_labels
from loopml.features import FeatureCache
from loopml.validation import CHECK_NAMES, CheckResult, validate_dataset

CHECK_DESCRIPTIONS = {
    "inputs_not_empty": "Every labelled input has non-blank text (image functions: is an image that decodes, "
    "within LOOPML_MAX_IMAGE_BYTES and LOOPML_MAX_IMAGE_PIXELS).",
    "labels_in_label_set": "Every label belongs to the function's current label set.",
    "no_conflicting_duplicates": "No identical inputs carry different labels.",
    "enough_examples_per_label": "Each label has enough examples to train (LOOPML_MIN_EXAMPLES_PER_LABEL); "
    "a short label (a new one, say) is left out of training with a warning, and training stops only when fewer "
    "than two labels have enough.",
}
REMOVED_CHECK = "removed_labels_excluded"


def _severity(result: CheckResult, min_examples: int) -> AssetCheckSeverity:
    """Every failure blocks training, except short labels while at least two labels have enough examples."""
    if result.name != "enough_examples_per_label":
        return AssetCheckSeverity.ERROR
    trainable = [label for label, n in result.details.get("counts", {}).items() if n >= min_examples]
    return AssetCheckSeverity.WARN if len(trainable) >= 2 else AssetCheckSeverity.ERROR


def waiting_for_examples(results: list[CheckResult], min_examples: int) -> bool:
    """A young function: every check passes but ``enough_examples_per_label``, and fewer than two labels have
    ``min_examples``. Training waits for more annotations; nothing is wrong with the data."""
    failed = [r for r in results if not r.passed]
    return [r.name for r in failed] == ["enough_examples_per_label"] and (
        _severity(failed[0], min_examples) == AssetCheckSeverity.ERROR
    )


@asset(
    partitions_def=functions_partitions,
    group_name="annotate",
    io_manager_key="loopml_io",
    output_required=False,
    kinds={"great_expectations", "polars"},
    check_specs=[
        AssetCheckSpec(name, asset="dataset", blocking=True, description=CHECK_DESCRIPTIONS[name])
        for name in CHECK_NAMES
    ]
    + [
        AssetCheckSpec(
            REMOVED_CHECK,
            asset="dataset",
            blocking=False,
            description="Annotations of labels removed from the function are left out of training (warning).",
        )
    ],
)
def dataset(
    context: AssetExecutionContext, loopml: LoopMLResource, annotations: pl.DataFrame
) -> Iterator[Output[pl.DataFrame] | AssetCheckResult]:
    """One row per labelled item: content hash, resolved label, source, stable train/holdout split.

    Validated with Great Expectations; each validation is a blocking asset check, so a failing check stops
    training until the data is fixed in Label Studio. A young function whose only shortfall is too few examples
    (fewer than two labels with ``LOOPML_MIN_EXAMPLES_PER_LABEL``) is not a failure: the dataset is not
    materialized, the check warns how many are missing, training is skipped and the run succeeds.
    """
    settings = loopml.settings()
    spec = loopml.registry().get(context.partition_key)
    removed = removed_labels(settings, spec.name)
    cache = FeatureCache(settings.features_dir, spec.encoder_id)
    everything = build_dataset(annotations, input_type=spec.input_type, known=cache.known)
    excluded = everything.filter(pl.col("label").is_in(sorted(removed)))
    data = everything.filter(~pl.col("label").is_in(sorted(removed)))
    excluded_counts = {r["label"]: r["len"] for r in excluded.group_by("label").agg(pl.len()).to_dicts()}
    if excluded.height:
        context.log.warning(
            f"{excluded.height} annotations of removed labels {sorted(excluded_counts)} are excluded from training"
        )
    results = validate_dataset(data, spec.labels, settings.min_examples_per_label)
    waiting = waiting_for_examples(results, settings.min_examples_per_label)
    if waiting:
        context.log.info(
            f"{spec.name}: fewer than two labels have {settings.min_examples_per_label} examples yet; training "
            "waits for more annotations (a normal state, not a failure)"
        )
    else:
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
                "excluded_removed_labels": MetadataValue.json(excluded_counts),
            },
        )
    yield AssetCheckResult(
        check_name=REMOVED_CHECK,
        passed=not excluded.height,
        severity=AssetCheckSeverity.WARN,
        description=(
            f"WARNING: {excluded.height} annotations of removed labels {sorted(excluded_counts)} are excluded"
            if excluded.height
            else "no annotations of removed labels"
        ),
        metadata={
            "excluded": MetadataValue.json(excluded_counts),
            "removed_labels": MetadataValue.json(sorted(removed)),
        },
    )
    for result in results:
        yield AssetCheckResult(
            check_name=result.name,
            passed=result.passed,
            severity=AssetCheckSeverity.WARN if waiting else _severity(result, settings.min_examples_per_label),
            description=result.description if result.passed else f"FAILED: {result.description}",
            metadata={
                key: MetadataValue.json(value) if isinstance(value, dict | list) else value
                for key, value in result.details.items()
            },
        )
