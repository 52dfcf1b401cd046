"""preannotations: the primary model's answer on every unlabelled Label Studio task."""

import time
from pathlib import Path

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.io_manager import asset_path
from assets.partitions import functions_partitions
from assets.resources import LoopMLResource
from loopml.dataset import content_hash
from loopml.deployments import DeploymentStore
from loopml.features import FeatureCache, write_unlabelled_items
from loopml.preannotate import predict_tasks

MAX_TASKS = 100_000  # per run; a larger backlog is covered by the next promotion or the nightly run


def unlabelled_items_path(data_dir: Path, function: str) -> Path:
    """Where the hashes of the function's unlabelled tasks (as last pre-annotated) are recorded."""
    return asset_path(data_dir, "unlabelled_items", function, ".parquet")


@asset(
    partitions_def=functions_partitions,
    group_name="annotate",
    deps=["deployment"],
    kinds={"labelstudio", "onnx"},
)
def preannotations(context: AssetExecutionContext, loopml: LoopMLResource) -> MaterializeResult:
    """Every unlabelled task gets the serving primary's prediction (label, calibrated score, model version) as
    a pre-annotation; the project shows that version's predictions, so annotators confirm instead of typing and
    can sort the Data Manager by prediction score. Re-run whenever a new primary is promoted.

    The unlabelled tasks' embeddings stay in the feature cache and their hashes are recorded for the
    ``model`` asset, whose embedding heads train in the principal directions of all the function's items."""
    from loopml.encoders import get_encoder
    from serving.model_store import load_classifier

    function = context.partition_key
    settings = loopml.settings()
    spec = loopml.registry().get(function)
    state = DeploymentStore(settings).get(function)
    if state is None or not state.primary_tag:
        context.log.info(f"{function} has no serving primary yet; nothing to pre-annotate")
        return MaterializeResult(metadata={"predictions": 0, "model_version": ""})
    if spec.labelstudio_project_id is None:
        raise ValueError(f"function {function!r} has no Label Studio project")
    started = time.perf_counter()
    client = loopml.labelstudio()
    tasks = client.unlabeled_tasks(spec.labelstudio_project_id, limit=MAX_TASKS)
    classifier = load_classifier(settings, state.primary_tag)
    encoder = get_encoder(classifier.encoder_id or spec.encoder_id)
    result = predict_tasks(
        tasks,
        classifier.predict_proba,
        classifier.label_set,
        state.primary_tag,
        FeatureCache(settings.features_dir, spec.encoder_id),
        lambda texts: encoder.encode(texts, progress=len(texts) > 256),
    )
    write_unlabelled_items(
        unlabelled_items_path(settings.data_dir, function),
        [content_hash(str(t.data["text"])) for t in tasks if str(t.data.get("text") or "").strip()],
    )
    created = client.import_predictions(spec.labelstudio_project_id, result.predictions)
    client.set_model_version(spec.labelstudio_project_id, state.primary_tag)
    scores = [p.score for p in result.predictions]
    return MaterializeResult(
        metadata={
            "model_version": state.primary_tag,
            "unlabelled_tasks": len(tasks),
            "predictions": created,
            "newly_embedded": result.newly_embedded,
            "predicted_labels": MetadataValue.json(result.label_counts()),
            "mean_score": float(sum(scores) / len(scores)) if scores else float("nan"),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
