"""preannotations: the primary model's answer on every unlabelled Label Studio task."""

import time
from pathlib import Path

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, AssetObservation, MaterializeResult, MetadataValue, asset

from assets.io_manager import asset_path
from assets.partitions import functions_partitions
from assets.resources import LoopMLResource, retried_when_labelstudio_is_down
from loopml.dataset import input_hash
from loopml.deployments import DeploymentStore
from loopml.features import FeatureCache, read_unlabelled_items, write_unlabelled_items
from loopml.functions import input_key
from loopml.labelstudio import PREFILLED_META, Prediction, TaskRecord
from loopml.preannotate import PreannotationResult, Progress, plan_chunks, predict_tasks, task_text

MAX_TASKS = 100_000  # per run; a larger backlog is covered by the next promotion or the nightly run
# tasks embedded, scored and imported at a time: on a large project, predictions appear in Label Studio and the
# next model can use the tasks as the run goes (2,000 long articles take minutes to embed); between chunks the
# run checks that its version is still the primary
CHUNK_TASKS = 256
# tasks whose embeddings are cached, scored and imported at a time (they go first): scoring is a matrix product
# and a TF-IDF transform, so a new primary's answers cover every embedded task within seconds
SCORE_CHUNK_TASKS = 2048


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


def _primary(deployments: DeploymentStore, function: str) -> str | None:
    state = deployments.get(function)
    return state.primary_tag if state else None


def _superseded(deployments: DeploymentStore, function: str, version: str) -> str | None:
    """The function's primary now when it is no longer ``version`` (``""`` for none), else None."""
    primary = _primary(deployments, function)
    return None if primary == version else primary or ""


def _report(context: AssetExecutionContext, function: str, version: str, progress: Progress, chunk: str) -> None:
    """Log the pass's progress and show it on the asset (an observation per chunk, while the run goes)."""
    context.log.info(f"{function} ({version}), {chunk}: {progress.summary()}")
    eta = progress.eta_seconds()
    context.log_event(
        AssetObservation(
            asset_key=context.asset_key,
            partition=function,
            metadata={
                "model_version": version,
                "tasks_done": progress.done,
                "tasks_total": progress.total,
                "embedded": progress.new_done,
                "rescored_cached": progress.cached_done,
                "tasks_per_second": round(progress.rate(), 2),
                **({"eta_seconds": round(eta, 1)} if eta is not None else {}),
            },
        )
    )


@asset(
    partitions_def=functions_partitions,
    group_name="annotate",
    deps=["deployment"],
    kinds={"labelstudio", "onnx"},
)
@retried_when_labelstudio_is_down
def preannotations(context: AssetExecutionContext, loopml: LoopMLResource) -> MaterializeResult:
    """Every unlabelled task gets the serving primary's prediction (label, calibrated score, model version) as
    a pre-annotation; the project shows that version's predictions, so annotators confirm instead of typing and
    can sort the Data Manager by prediction score. Re-run whenever a new primary is promoted (every task) and
    whenever tasks are added to the project (only the tasks without that version's answer: imported tasks,
    calls sent for review that another version answered).

    Tasks whose embeddings are cached are scored first, ``SCORE_CHUNK_TASKS`` at a time (after a promotion:
    seconds for the whole project, nothing re-encoded); the tasks still to embed follow, ``CHUNK_TASKS`` at a
    time, each chunk logged with counts, rate and ETA and observed on the asset. Before each chunk the run
    checks that its version is still the primary: when it is not, the run stops there, successfully, with
    ``complete: false`` and ``superseded_by`` in its metadata, and the sensor starts the new primary's pass.

    The unlabelled tasks' embeddings stay in the feature cache and their hashes are recorded for the
    ``model`` asset, whose embedding heads train in the principal directions of all the function's items."""
    from loopml.encoders import get_encoder
    from serving.model_store import load_classifier

    function = context.partition_key
    settings = loopml.settings()
    spec = loopml.registry().get(function)
    deployments = DeploymentStore(settings)
    version = _primary(deployments, function)
    if not version:
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
    prefilled = {t.task_id for t in unlabelled if already_prefilled(t, version)}
    done = (read_preannotated(done_path, version) & {t.task_id for t in unlabelled}) | prefilled
    tasks = [t for t in unlabelled if t.task_id not in done]
    classifier = load_classifier(settings, version)
    encoder_id = classifier.encoder_id or spec.encoder_id
    cache = FeatureCache(settings.features_dir, encoder_id)
    record = unlabelled_items_path(settings.data_dir, function)
    key = input_key(spec.input_type)  # the input in the tasks' data, and what the predictions label
    hash_of = {t.task_id: input_hash(text, spec.input_type) for t in unlabelled if (text := task_text(t, key))}
    # tasks an earlier run embedded and that are still unlabelled stay recorded while this run catches up
    current = set(hash_of.values())
    earlier = [h for h in read_unlabelled_items(record) if h in current]
    cached = cache.lookup([hash_of[t.task_id] for t in tasks if t.task_id in hash_of])
    chunks = plan_chunks(tasks, hash_of, cached, CHUNK_TASKS, SCORE_CHUNK_TASKS)
    progress = Progress.of(chunks)
    context.log.info(
        f"{function} ({version}): {len(tasks)} of {len(unlabelled)} unlabelled tasks to pre-annotate, "
        f"{progress.cached_total} from cached embeddings first, then {progress.new_total} to embed"
    )

    def encode(texts: list[str]) -> np.ndarray:  # the encoder loads only when something is to embed
        return get_encoder(encoder_id).encode(texts)

    predictions: list[Prediction] = []
    hashes: list[str] = []
    created = newly_embedded = 0
    superseded_by: str | None = None
    for number, chunk in enumerate(chunks):
        if (superseded_by := _superseded(deployments, function, version)) is not None:
            break  # never spend work on a version that no longer serves
        began = time.perf_counter()
        part = predict_tasks(
            chunk.tasks,
            classifier.predict_proba,
            classifier.label_set,
            version,
            cache,
            encode,
            hash_of=hash_of,
            known=cached,
            key=key,
        )
        created += client.import_predictions(project, part.predictions)
        if number == 0:  # the project shows this version's predictions from the first chunk on
            client.set_model_version(project, version)
        done |= {t.task_id for t in chunk.tasks}
        write_preannotated(done_path, version, done)
        predictions += part.predictions
        newly_embedded += part.newly_embedded
        hashes += [hash_of[t.task_id] for t in chunk.tasks if t.task_id in hash_of]
        # the next model can use the tasks embedded so far
        write_unlabelled_items(record, list(dict.fromkeys(hashes + earlier)))
        progress.add(chunk, time.perf_counter() - began)
        _report(context, function, version, progress, f"chunk {number + 1}/{len(chunks)}")
    if not chunks and (superseded_by := _superseded(deployments, function, version)) is None:
        if done:  # nothing left to score: the project shows this version's answers (it has some there)
            client.set_model_version(project, version)
        # (no unlabelled task at all: Label Studio refuses a version without predictions in the project)
        write_unlabelled_items(record, earlier)
    if superseded_by is not None:
        context.log.info(
            f"{function}: {version} is no longer the primary ({superseded_by or 'none'} is); stopped after "
            f"{progress.done}/{progress.total} tasks, the next pass pre-annotates with the new primary"
        )
    result = PreannotationResult(predictions, newly_embedded)
    scores = [p.score for p in result.predictions]
    return MaterializeResult(
        metadata={
            "model_version": version,
            "complete": superseded_by is None,
            **({"superseded_by": superseded_by} if superseded_by is not None else {}),
            "project_tasks": project_tasks,
            "unlabelled_tasks": len(unlabelled),
            "already_preannotated": len(unlabelled) - len(tasks),
            "predictions": created,
            "rescored_cached": progress.cached_done,
            "newly_embedded": result.newly_embedded,
            "tasks_left": progress.total - progress.done,
            "predicted_labels": MetadataValue.json(result.label_counts()),
            "mean_score": float(sum(scores) / len(scores)) if scores else float("nan"),
            "tasks_per_second": round(progress.rate(), 2),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
