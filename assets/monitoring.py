"""drift_report: has live traffic moved away from the training data? (Evidently)"""

import os
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from assets.partitions import functions_partitions
from assets.resources import LoopMLResource
from loopml.deployments import DeploymentStore
from loopml.report_links import signed_url

MAX_CURRENT = 50_000  # newest calls of the window read for the report (it samples them further)


MIN_HOLDOUT = 50  # holdout items needed to use the holdout as the reference
MIN_OOF_REFERENCE = 200  # with the out-of-fold fallback, fewer training items than this: no drift verdict yet


def _reference(
    settings, dataset: pl.DataFrame, features: pl.DataFrame, model: dict, primary: str | None, input_type: str
):
    """What "no drift" looks like: the holdout (never trained on) as the serving model answers it, so the
    labels and confidences are comparable with live answers. With a small holdout, the training items with
    their out-of-fold answers instead (a little less confident than the refit model: read confidence drift
    with care then)."""
    from loopml.drift import DriftInput
    from loopml.label_issues import read_oof
    from serving.model_store import load_classifier, version_path

    items = dataset.unique(subset="content_hash").join(features, on="content_hash", how="inner")
    holdout = items.filter(pl.col("split") == "holdout")
    if holdout.height >= MIN_HOLDOUT:
        classifier = load_classifier(settings, primary or model["tag"])
        embeddings = np.asarray(holdout["embedding"].to_list(), dtype=np.float32)
        texts = holdout["text"].fill_null("").to_list()
        proba = classifier.predict_proba(texts, embeddings)
        label_set = list(classifier.label_set)
        labels = [label_set[int(i)] for i in proba.argmax(axis=1)]
        return DriftInput(embeddings, labels, proba.max(axis=1), texts, input_type), label_set, "holdout"
    ids, _given, label_set, proba = read_oof(version_path(settings, model["tag"]) / "oof_proba.parquet")
    oof = pl.DataFrame(
        {"content_hash": ids, "label": [label_set[int(i)] for i in proba.argmax(axis=1)], "conf": proba.max(axis=1)}
    ).join(items.select("content_hash", "text", "embedding"), on="content_hash", how="inner")
    embeddings = np.asarray(oof["embedding"].to_list(), dtype=np.float32).reshape(oof.height, -1)
    return (
        DriftInput(embeddings, oof["label"], oof["conf"], oof["text"].fill_null(""), input_type),
        label_set,
        "training out-of-fold",
    )


def drift_window() -> timedelta:
    """How far back the current window reaches: ``LOOPML_DRIFT_WINDOW_HOURS`` (default 24)."""
    return timedelta(hours=float(os.environ.get("LOOPML_DRIFT_WINDOW_HOURS", "24")))


@asset(
    partitions_def=functions_partitions,
    group_name="monitor",
    io_manager_key="loopml_io",
    deps=["invocations"],
    kinds={"evidently", "polars"},
)
def drift_report(
    context: AssetExecutionContext, loopml: LoopMLResource, dataset: pl.DataFrame, features: pl.DataFrame, model: dict
) -> Output[dict]:
    """Evidently report comparing the training data (its holdout, as the serving model answers it) with recent
    calls: input drift on embeddings (reduced by PCA first), output drift (label and confidence distributions),
    and the inputs' quality (texts: length, words, empty, duplicated; images: width, height, brightness,
    channels, duplicated, unreadable; the distributions of length, or of width, height and brightness, are
    tested for drift). The HTML
    report is saved under LOOPML_HOME/reports and linked here; the key figures are metadata, and the drift
    sensor acts on them (raises the review budget, optionally retrains)."""
    from loopml.drift import DEFAULT_MIN_ROWS, DriftInput, build_drift_report
    from loopml.invocation_frames import load_serving_invocations

    function = context.partition_key
    settings = loopml.settings()
    state = DeploymentStore(settings).get(function)
    input_type = loopml.registry().get(function).input_type
    now = datetime.now(UTC)
    since = now - drift_window()

    primary = state.primary_tag if state else None
    reference, label_set, basis = _reference(settings, dataset, features, model, primary, input_type)
    calls = load_serving_invocations(settings, function, since=since, limit=MAX_CURRENT)
    current = DriftInput.from_invocations(calls, input_type)
    html = settings.home / "reports" / function / f"drift-{now:%Y%m%dT%H%M%S}.html"
    html.parent.mkdir(parents=True, exist_ok=True)
    summary = build_drift_report(
        reference,
        current,
        html,
        label_set=label_set,
        # a young model's out-of-fold answers on a few dozen items are no baseline to raise alarms against
        min_rows=MIN_OOF_REFERENCE if basis != "holdout" and len(reference) < MIN_OOF_REFERENCE else DEFAULT_MIN_ROWS,
        title=f"LoopML drift report: {function} ({model['tag']})",
    )
    latest = html.parent / "latest.html"
    latest.unlink(missing_ok=True)
    latest.symlink_to(html.name)
    figures = summary.as_metadata()
    context.log.info(f"{function}: {summary.message}")
    return Output(
        {**figures, "window_start": since.isoformat(), "window_end": now.isoformat(), "model": model["tag"]},
        metadata={
            **{k: v for k, v in figures.items() if k != "html_path"},
            "report": MetadataValue.path(str(html)),
            # a signed link to the serving API: opens with one click, from any machine that reaches the API
            "report_url": MetadataValue.url(signed_url(settings, function, html.name)),
            "window_start": since.isoformat(),
            "window_end": now.isoformat(),
            "model_version": model["tag"],
            "reference": basis,
        },
    )
