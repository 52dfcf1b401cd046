"""deployment: the gate, then the candidate as canary next to the serving primary (or as first primary)."""

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
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
from loopml.dataset import training_rows
from loopml.deployments import (
    CANARY_STEPS,
    HOLD_ACTION,
    ROLLOUT_PATIENCE_SECONDS,
    WAIT_ACTION,
    DeploymentStore,
    rollout_age_seconds,
)
from loopml.features import FeatureCache
from loopml.gate import DEFAULT_TOLERANCE, FreshItems, evaluate_gate
from loopml.label_issues import read_oof


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def version_probabilities(classifier: Any, texts: list[str], embeddings: np.ndarray, encoder_id: str) -> np.ndarray:
    """Score with ``classifier``; re-embed only if it was trained on another encoder than the features."""
    if not texts:
        return np.zeros((0, len(classifier.label_set)), dtype=np.float32)
    if classifier.encoder_id not in (None, encoder_id):
        from loopml.encoders import get_encoder

        embeddings = get_encoder(classifier.encoder_id).encode(texts)
    return classifier.predict_proba(texts, embeddings)


def item_embeddings(frame: pl.DataFrame, cache: FeatureCache, encoder_id: str) -> np.ndarray:
    """The embeddings of ``frame``'s items (dataset rows joined with features): the joined ones, and for rows the
    features do not cover, the cached (or newly encoded) ones. The dataset can be newer than the features: a
    training run between the two stages, or a dataset whose blocking check stopped the run before features."""
    if frame.is_empty():
        return np.zeros((0, 0), dtype=np.float32)
    if frame["embedding"].null_count() == 0:
        return np.asarray(frame["embedding"].to_list(), dtype=np.float32)

    def encode(texts: list[str]) -> np.ndarray:
        from loopml.encoders import get_encoder

        return get_encoder(encoder_id).encode(texts)

    matrix, _ = cache.embed(frame["content_hash"].to_list(), frame["text"].fill_null("").to_list(), encode)
    return matrix


def fresh_items(
    settings: Any, candidate_tag: str, primary_tag: str, candidate_labels: list[str], rows: pl.DataFrame
) -> tuple[tuple[list[str], np.ndarray, pl.DataFrame] | None, bool]:
    """The candidate's training items that the primary never trained on: ``(labels, the candidate's
    out-of-fold probabilities, their rows of ``rows`` for the primary to score)``, and whether the candidate
    learnt from any example (item and label) the primary did not. ``(None, True)`` when either version kept
    no record of its training items (``oof_proba.parquet``)."""
    from serving.model_store import version_path

    paths = [version_path(settings, tag) / "oof_proba.parquet" for tag in (candidate_tag, primary_tag)]
    if not all(path.exists() for path in paths):
        return None, True
    cand_ids, cand_given, cand_set, cand_proba = read_oof(paths[0])
    prim_ids, prim_given, _, _ = read_oof(paths[1])
    new_examples = set(zip(cand_ids, cand_given, strict=True)) != set(zip(prim_ids, prim_given, strict=True))
    seen = set(prim_ids)
    order = pl.DataFrame(
        {"content_hash": cand_ids, "given": cand_given, "position": list(range(len(cand_ids)))},
        schema={"content_hash": pl.String, "given": pl.String, "position": pl.Int64},
    ).filter(~pl.col("content_hash").is_in(list(seen)))
    frame = order.join(rows.unique("content_hash"), on="content_hash", how="inner").sort("position")
    columns = [cand_set.index(label) for label in candidate_labels]
    proba = cand_proba[frame["position"].to_numpy()][:, columns] if frame.height else np.zeros((0, len(columns)))
    return (frame["given"].to_list(), proba, frame), new_examples


OWN_CHECK_ITEMS = 2000  # training items the candidate answers again for the gate's own-CV check (at most)


def own_answers(path: Any, rows: pl.DataFrame) -> tuple[float, pl.DataFrame, list[str]] | None:
    """From a version's ``oof_proba.parquet``: its out-of-fold accuracy, and up to :data:`OWN_CHECK_ITEMS` of
    its training items (rows of ``rows``) with the labels it trained on, for the deployable model to answer
    again (None without rows)."""
    ids, given, label_set, proba = read_oof(path)
    if not given:
        return None
    cv_accuracy = float(np.mean([label_set[int(k)] == g for k, g in zip(proba.argmax(axis=1), given, strict=True)]))
    trained = pl.DataFrame({"content_hash": ids[:OWN_CHECK_ITEMS], "given": given[:OWN_CHECK_ITEMS]})
    frame = trained.join(rows.unique("content_hash").drop("label", strict=False), on="content_hash", how="inner")
    return cv_accuracy, frame, frame["given"].to_list()


def _kind(classifier: Any) -> tuple[str, list[str], str | None]:
    return type(classifier).__name__, list(classifier.label_set), getattr(classifier, "encoder_id", None)


def _gate_check_spec(asset_name: str) -> AssetCheckSpec:
    return AssetCheckSpec(
        "gate",
        asset=asset_name,
        description="The candidate is not worse than the primary on the holdout and passes every must-pass example.",
    )


@asset(
    partitions_def=functions_partitions,
    group_name="deploy",
    io_manager_key="loopml_io",
    kinds={"bentoml"},
    check_specs=[_gate_check_spec("deployment")],
)
def deployment(
    context: AssetExecutionContext,
    loopml: LoopMLResource,
    model: dict[str, Any],
    dataset: pl.DataFrame,
    features: pl.DataFrame,
) -> Iterator[Output[dict[str, Any]] | AssetCheckResult]:
    """Gate the new version against the serving primary, then roll it out as a canary.

    The first version of a function becomes primary directly. Otherwise both versions are scored on the same
    holdout items (labels they share) and on the must-pass examples; a candidate that passes becomes the
    canary at the initial weight (``LOOPML_CANARY_INITIAL_WEIGHT``, default 10 %) and the canary controller
    ramps, promotes or rolls it back from live traffic. A rejected candidate keeps the primary serving and
    fails the `gate` check with the reason.

    One rollout at a time: while a canary has been rolling out for less than ``LOOPML_ROLLOUT_PATIENCE_SECONDS``
    (default 300), a candidate that passes the gate *waits* (decision ``waiting``); when the rollout ends the
    canary controller requests a ``deploy_function`` run, which gates the newest version against the primary
    of that moment. A rollout older than that (too little traffic to decide) is replaced.
    """
    yield from gate_and_roll_out(context, loopml, str(model["tag"]), dataset, features)


@asset(
    partitions_def=functions_partitions,
    group_name="train_deep",
    io_manager_key="loopml_io",
    kinds={"bentoml"},
    check_specs=[_gate_check_spec("deep_deployment")],
)
def deep_deployment(
    context: AssetExecutionContext,
    loopml: LoopMLResource,
    deep_model: dict[str, Any],
    dataset: pl.DataFrame,
    features: pl.DataFrame,
) -> Iterator[Output[dict[str, Any]] | AssetCheckResult]:
    """A deep-tier version that cross-validation selected goes through the very gate and canary rollout of
    ``deployment``; when none was selected there is nothing to deploy (decision ``not_selected``)."""
    if not deep_model.get("selected"):
        reason = str(deep_model.get("reason", "no deep version was selected"))
        yield Output({"decision": "not_selected", "candidate": None, "reason": reason}, metadata={"reason": reason})
        yield AssetCheckResult(check_name="gate", passed=True, description=f"nothing to gate: {reason}")
        return
    yield from gate_and_roll_out(context, loopml, str(deep_model["tag"]), dataset, features)


def gate_and_roll_out(
    context: AssetExecutionContext,
    loopml: LoopMLResource,
    candidate_tag: str,
    dataset: pl.DataFrame,
    features: pl.DataFrame,
) -> Iterator[Output[dict[str, Any]] | AssetCheckResult]:
    """The gate and the rollout decision for version ``candidate_tag`` (see :func:`deployment`)."""
    from serving.model_store import load_classifier, version_path

    settings = loopml.settings()
    function = context.partition_key
    spec = loopml.registry().get(function)
    store = DeploymentStore(settings)
    state = store.get(function)
    tolerance = float(os.environ.get("LOOPML_GATE_TOLERANCE", DEFAULT_TOLERANCE))
    patience = float(os.environ.get("LOOPML_ROLLOUT_PATIENCE_SECONDS", ROLLOUT_PATIENCE_SECONDS))
    initial_weight = float(os.environ.get("LOOPML_CANARY_INITIAL_WEIGHT", CANARY_STEPS[0]))

    rows = training_rows(dataset, spec.labels).join(features, on="content_hash", how="left")
    holdout = rows.filter(pl.col("split") == "holdout")
    must_pass = rows.filter(pl.col("must_pass"))
    candidate = load_classifier(settings, candidate_tag)

    cache = FeatureCache(settings.features_dir, spec.encoder_id)

    def score(classifier: Any, frame: pl.DataFrame) -> np.ndarray:
        embeddings = item_embeddings(frame, cache, spec.encoder_id)
        return version_probabilities(classifier, frame["text"].to_list(), embeddings, spec.encoder_id)

    primary = load_classifier(settings, state.primary_tag) if state and state.primary_tag else None
    fresh, new_examples = None, True
    oof_path = version_path(settings, candidate_tag) / "oof_proba.parquet"
    own = own_answers(oof_path, rows) if oof_path.exists() else None
    cv_accuracy, own_train = None, None
    if own is not None and own[1].height:
        cv_accuracy, frame, given = own
        answers = [candidate.label_set[int(k)] for k in score(candidate, frame).argmax(axis=1)]
        own_train = (float(np.mean([a == g for a, g in zip(answers, given, strict=True)])), frame.height)
    if primary is not None:
        fresh, new_examples = fresh_items(settings, candidate_tag, state.primary_tag, list(candidate.label_set), rows)
        if fresh is not None:
            fresh = FreshItems(fresh[0], fresh[1], score(primary, fresh[2]))
        # something new beyond the examples: a label set, a model family (the deep tier), an encoder
        new_examples = new_examples or _kind(candidate) != _kind(primary)
    result = evaluate_gate(
        truth=holdout["label"].to_list(),
        candidate_probs=score(candidate, holdout),
        candidate_labels=list(candidate.label_set),
        primary_probs=score(primary, holdout) if primary else None,
        primary_labels=list(primary.label_set) if primary else None,
        must_pass_truth=must_pass["label"].to_list(),
        must_pass_texts=must_pass["text"].to_list(),
        must_pass_probs=score(candidate, must_pass),
        tolerance=tolerance,
        fresh=fresh,
        new_examples=new_examples,
        primary_must_pass_probs=score(primary, must_pass) if primary and must_pass.height else None,
        candidate_cv_accuracy=cv_accuracy,
        candidate_train=own_train,
    )
    details = {
        "candidate": candidate_tag,
        "candidate_accuracy": result.candidate_accuracy,
        "primary_accuracy": result.primary_accuracy,
        "compared_items": result.compared_items,
        "fresh_items": result.fresh_items,
        "evidence_candidate_accuracy": result.evidence_candidate_accuracy,
        "evidence_primary_accuracy": result.evidence_primary_accuracy,
        "holdout_disagreement": result.holdout_disagreement,
        "must_pass_total": result.must_pass_total,
        "must_pass_failures": result.must_pass_failures[:20],
    }
    if state is None or state.primary_tag is None:
        if result.must_pass_failures:
            decision = "rejected"
            store.record(function, "reject", f"{candidate_tag} failed the gate: {result.reason}", details=details)
        else:
            decision = "primary"
            state = store.set_primary(function, candidate_tag, "first version of the function", details=details)
    elif candidate_tag in (state.primary_tag, state.canary_tag):
        decision = "unchanged"
    elif result.passed and result.held:
        decision = "held"
        store.record(function, HOLD_ACTION, f"{candidate_tag} {result.reason}", details=details)
    elif result.passed and (age := rollout_age_seconds(state)) is not None and age < patience:
        decision = "waiting"
        store.record(
            function,
            WAIT_ACTION,
            f"{candidate_tag} passed the gate: {result.reason}; waits for the rollout of canary {state.canary_tag} "
            f"({age:.0f} s so far) to end",
            details=details,
        )
    elif result.passed:
        decision = "canary"
        replaced = f" (replaces canary {state.canary_tag})" if state.canary_tag else ""
        state = store.start_canary(
            function, candidate_tag, initial_weight, f"gate passed: {result.reason}{replaced}", details=details
        )
    else:
        decision = "rejected"
        store.record(function, "reject", f"{candidate_tag} failed the gate: {result.reason}", details=details)
    state = store.get(function)
    context.log.info(f"{function}: {candidate_tag} -> {decision} ({result.reason})")
    yield Output(
        {
            "decision": decision,
            "candidate": candidate_tag,
            "primary": state.primary_tag if state else None,
            "canary": state.canary_tag if state else None,
            "canary_weight": state.canary_weight if state else 0.0,
            "reason": result.reason,
        },
        metadata={
            "decision": decision,
            "candidate": candidate_tag,
            "primary": (state.primary_tag if state else None) or "",
            "canary": (state.canary_tag if state else None) or "",
            "canary_weight": float(state.canary_weight if state else 0.0),
            "reason": result.reason,
            "candidate_holdout_accuracy": result.candidate_accuracy
            if result.candidate_accuracy is not None
            else float("nan"),
            "primary_holdout_accuracy": result.primary_accuracy
            if result.primary_accuracy is not None
            else float("nan"),
            "per_label_recall": MetadataValue.json(result.per_label_recall),
            "fresh_items": result.fresh_items,
            "evidence_items": result.evidence_items,
            # the numbers the gate decided on, as numbers Dagster plots across materializations (nan: not measured)
            "evidence_candidate_accuracy": _number(result.evidence_candidate_accuracy),
            "evidence_primary_accuracy": _number(result.evidence_primary_accuracy),
            "holdout_disagreement": _number(result.holdout_disagreement),
            "compared_items": result.compared_items,
            "must_pass": f"{result.must_pass_total - len(result.must_pass_failures)}/{result.must_pass_total} pass",
        },
    )
    yield AssetCheckResult(
        check_name="gate",
        passed=decision != "rejected",
        severity=AssetCheckSeverity.WARN,
        description=f"{decision}: {result.reason}",
        metadata={
            "must_pass_failures": MetadataValue.json(result.must_pass_failures[:20]),
            "compared_items": result.compared_items,
        },
    )
