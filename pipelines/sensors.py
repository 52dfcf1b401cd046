"""Sensors: discover functions (partitions) and react to annotation changes in Label Studio within seconds."""


import json

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.partitions import functions_partitions
from assets.resources import LoopMLResource
from loopml.config import get_settings
from loopml.labelstudio import LabelStudioUnavailable
from loopml.loop_signals import annotation_signature, labels_changed, training_signature
from pipelines.jobs import train_function

ACTIVE_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


@sensor(minimum_interval_seconds=5, default_status=DefaultSensorStatus.RUNNING)
def function_discovery_sensor(
    context: SensorEvaluationContext, loopml: LoopMLResource
) -> SensorResult | SkipReason:
    """Adds a `functions` partition for every function registered with `loopml functions create`, and adopts
    label sets edited in Label Studio's label config into the registry (the annotation sensor then requests the
    retraining run, as it does after `loopml functions add-label`/`remove-label`)."""
    existing = set(context.instance.get_dynamic_partitions(functions_partitions.name))
    names = loopml.registry().names()
    new = [name for name in names if name not in existing]
    changes = _sync_label_sets(context, loopml, [name for name in names if name in existing])
    if not new and not changes:
        return SkipReason(f"no new functions ({len(existing)} known), no label set changes")
    if new:
        context.log.info(f"adding partitions for {new}")
    if not new:
        return SkipReason(f"label sets adopted from Label Studio: {'; '.join(c.describe() for c in changes)}")
    return SensorResult(dynamic_partitions_requests=[functions_partitions.build_add_request(new)])


def _sync_label_sets(context: SensorEvaluationContext, loopml: LoopMLResource, names: list[str]) -> list:
    """Label sets changed in Label Studio since the last look (recorded in the registry)."""
    from loopml.evolution import sync_from_labelstudio
    from loopml.functions import FunctionError
    from loopml.labelstudio import LabelStudioError

    if not names:
        return []
    client = loopml.labelstudio()
    changes = []
    for name in names:
        try:
            change = sync_from_labelstudio(loopml.settings(), client, name)
        except (LabelStudioUnavailable, LabelStudioError, FunctionError) as error:
            context.log.warning(f"label set of {name} not checked: {error}")
            continue
        if change:
            context.log.warning(f"label set changed in Label Studio: {change.describe()}")
            changes.append(change)
    return changes


def has_active_run(context: SensorEvaluationContext, function: str) -> bool:
    runs = context.instance.get_run_records(
        filters=RunsFilter(
            job_name=train_function.name,
            statuses=ACTIVE_STATUSES,
            tags={"dagster/partition": function},
        ),
        limit=1,
    )
    return bool(runs)


@sensor(
    job=train_function,
    minimum_interval_seconds=get_settings().annotation_poll_seconds,
    default_status=DefaultSensorStatus.RUNNING,
)
def annotation_sensor(context: SensorEvaluationContext, loopml: LoopMLResource) -> SensorResult | SkipReason:
    """Requests a training run for each function whose Label Studio annotations or label set changed.

    The cursor holds, per function, the training signature (annotations and label set) last acted on. When
    Label Studio is down the tick is skipped with the reason and the cursor stays put, so nothing is missed once
    it is back. A function with a run already queued or running waits for the next tick (its changes are not
    lost).
    """
    cursor: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    partitions = set(context.instance.get_dynamic_partitions(functions_partitions.name))
    functions = [f for f in loopml.registry().list() if f.name in partitions and f.labelstudio_project_id]
    if not functions:
        return SkipReason("no functions with a Label Studio project yet; create one with `loopml functions create`")
    try:
        client = loopml.labelstudio()
        client.ensure_reachable()
        signatures = {
            f.name: training_signature(annotation_signature(client, f.labelstudio_project_id), f.labels)
            for f in functions
        }
    except LabelStudioUnavailable as error:
        return SkipReason(f"{error}; the cursor did not advance, changes will be picked up once it is back")

    requests: list[RunRequest] = []
    new_cursor = dict(cursor)
    busy: list[str] = []
    for name, signature in signatures.items():
        if signature is None or signature == cursor.get(name):
            continue
        if has_active_run(context, name):
            busy.append(name)
            continue
        new_cursor[name] = signature
        requests.append(
            RunRequest(
                partition_key=name,
                run_key=f"{name}:{signature}",
                tags={
                    "loopml/trigger": "label-set" if labels_changed(cursor.get(name), signature) else "annotations",
                    "loopml/signature": signature,
                },
            )
        )
    if not requests:
        reason = f"waiting for running training of {busy}" if busy else "no annotation changes"
        return SkipReason(reason)
    return SensorResult(run_requests=requests, cursor=json.dumps(new_cursor, sort_keys=True))
