"""preannotations: the primary model's answer on every unlabelled Label Studio task."""

import time
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.io_manager import asset_path
from assets.partitions import functions_partitions
from assets.resources import LoopMLResource
from loopml.dataset import content_hash
from loopml.deployments import DeploymentStore
from loopml.features import FeatureCache, read_unlabelled_items, write_unlabelled_items
from loopml.labelstudio import PREFILLED_META, Prediction, TaskRecord
from loopml.preannotate import PreannotationResult, predict_tasks

MAX_TASKS = 100_000  # per run; a larger backlog is covered by the next promotion or the nightly run
# tasks embedded, scored and imported at a time: on a large project, predictions appear in Label Studio and the
# next model can use the tasks as the run goes (2,000 long articles take minutes to embed)
CHUNK_TASKS = 256


def unlabelled_items_path(data_dir: Path, function: str) -> Path:
    """Where the hashes of the function's unlabelled tasks (as last pre-annotated) are recorded."""
    return asset_path(data_dir, "unlabelled_items", function, ".parquet")


def preannotated_tasks_path(data_dir: Path, function: str) -> Path:
    """Where the ids of the tasks that carry the primary's pre-annotation are recorded (with that version)."""
    return asset_path(data_dir, "preannotated_tasks", function, ".parquet")


def read_preannotated(path: Path, model_version: str) -> set[int]:
    """Ids of the tasks already pre-annotated by ``model_version`` (none when the record is of another one)."""
    if not path.exists():
        return set()
    done = pl.read_parquet(path)
    return set(done.filter(pl.col("model_version") == model_version)["task_id"].to_list())


def write_preannotated(path: Path, model_version: str, task_ids: set[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(
        {"task_id": sorted(task_ids), "model_version": [model_version] * len(task_ids)},
        schema={"task_id": pl.Int64, "model_version": pl.String},
    )
    tmp = path.with_name(path.name + ".tmp")
    frame.write_parquet(tmp)
    tmp.replace(path)


def already_prefilled(task: TaskRecord, model_version: str) -> bool:
    """A task imported with ``model_version``'s answer already on it (a call sent for review)."""
    return str((task.meta or {}).get(PREFILLED_META) or "") == model_version


@asset(
    partitions_def=functions_partitions,
    group_name="annotate",
    deps=["deployment"],
    kinds={"labelstudio", "onnx"},
)
def preannotations(context: AssetExecutionContext, loopml: LoopMLResource) -> MaterializeResult:
    """Every unlabelled task gets the serving primary's prediction (label, calibrated score, model version) as
    a pre-annotation; the project shows that version's predictions, so annotators confirm instead of typing and
    can sort the Data Manager by prediction score. Re-run whenever a new primary is promoted (every task) and
    whenever tasks are added to the project (only the tasks without that version's answer: imported tasks,
    calls sent for review that another version answered). Works in chunks of ``CHUNK_TASKS``.

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
    project = spec.labelstudio_project_id
    project_tasks = client.task_fingerprint(project)[1]
    unlabelled = client.unlabeled_tasks(project, limit=MAX_TASKS)
    done_path = preannotated_tasks_path(settings.data_dir, function)
    prefilled = {t.task_id for t in unlabelled if already_prefilled(t, state.primary_tag)}
    done = (read_preannotated(done_path, state.primary_tag) & {t.task_id for t in unlabelled}) | prefilled
    tasks = [t for t in unlabelled if t.task_id not in done]
    classifier = load_classifier(settings, state.primary_tag)
    encoder = get_encoder(classifier.encoder_id or spec.encoder_id)
    cache = FeatureCache(settings.features_dir, spec.encoder_id)
    record = unlabelled_items_path(settings.data_dir, function)
    hash_of = {
        t.task_id: content_hash(str(t.data["text"])) for t in unlabelled if str(t.data.get("text") or "").strip()
    }
    text_hashes = [hash_of.get(t.task_id, "") for t in tasks]
    # tasks an earlier run embedded and that are still unlabelled stay recorded while this run catches up
    current = set(hash_of.values())
    earlier = [h for h in read_unlabelled_items(record) if h in current]
    predictions: list[Prediction] = []
    hashes: list[str] = []
    created = newly_embedded = 0
    for start in range(0, max(len(tasks), 1), CHUNK_TASKS):
        chunk = tasks[start : start + CHUNK_TASKS]
        part = predict_tasks(
            chunk,
            classifier.predict_proba,
            classifier.label_set,
            state.primary_tag,
            cache,
            encoder.encode,
        )
        created += client.import_predictions(project, part.predictions)
        if start == 0:  # the project shows this version's predictions from the first chunk on
            client.set_model_version(project, state.primary_tag)
        done |= {t.task_id for t in chunk}
        write_preannotated(done_path, state.primary_tag, done)
        predictions += part.predictions
        newly_embedded += part.newly_embedded
        hashes += [h for h in text_hashes[start : start + CHUNK_TASKS] if h]
        # the next model can use the tasks embedded so far
        write_unlabelled_items(record, list(dict.fromkeys(hashes + earlier)))
        if len(tasks) > CHUNK_TASKS:
            context.log.info(f"{function}: pre-annotated {min(start + CHUNK_TASKS, len(tasks))}/{len(tasks)} tasks")
    result = PreannotationResult(predictions, newly_embedded)
    scores = [p.score for p in result.predictions]
    return MaterializeResult(
        metadata={
            "model_version": state.primary_tag,
            "project_tasks": project_tasks,
            "unlabelled_tasks": len(unlabelled),
            "already_preannotated": len(unlabelled) - len(tasks),
            "predictions": created,
            "newly_embedded": result.newly_embedded,
            "predicted_labels": MetadataValue.json(result.label_counts()),
            "mean_score": float(sum(scores) / len(scores)) if scores else float("nan"),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
