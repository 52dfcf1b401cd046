"""Sensors that follow the loop: inspect each new model, and refresh pre-annotations when the primary changes or
tasks are added."""

import time

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_status_sensor,
    sensor,
)

from assets.partitions import functions_partitions
from assets.resources import LoopMLResource
from loopml.deployments import DeploymentStore
from pipelines.jobs import inspect_function, preannotate_function, train_function
from pipelines.sensors import ACTIVE_STATUSES


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[train_function],
    request_job=inspect_function,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,  # inspection is not on the way to a canary; each look reads the run storage
)
def inspect_after_training(context: RunStatusSensorContext) -> RunRequest | SkipReason:
    """After every training run that made a model, look for likely label errors with the new model's
    predictions (a young function's run that waited for more examples made none: nothing to inspect)."""
    function = context.dagster_run.tags.get("dagster/partition")
    if not function:
        return SkipReason("training run without a function partition")
    if not made_a_model(context.instance, context.dagster_run.run_id):
        return SkipReason(f"training run of {function} made no model (too few examples yet)")
    return RunRequest(
        partition_key=function,
        run_key=f"inspect:{context.dagster_run.run_id}",
        tags={"loopml/trigger": "trained"},
    )


def made_a_model(instance: DagsterInstance, run_id: str) -> bool:
    """Whether the run materialized the `model` asset."""
    records = instance.get_records_for_run(run_id=run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    return any(r.event_log_entry.dagster_event.asset_key == AssetKey("model") for r in records)


RETRY_AFTER_SECONDS = 120  # a failed pre-annotation run (Label Studio down, say) is retried after this


def _last_preannotation(context: SensorEvaluationContext, function: str) -> tuple[str | None, int | None, bool]:
    """The model version of the function's last successful pre-annotation, the project's task count then, and
    whether that pass finished (a pass stops early, successfully, when its version stops being the primary)."""
    records = context.instance.fetch_materializations(
        records_filter=AssetRecordsFilter(asset_key=AssetKey("preannotations"), asset_partitions=[function]),
        limit=1,
    ).records
    if not records:
        return None, None, False
    metadata = records[0].asset_materialization.metadata
    version, tasks, complete = (metadata.get(key) for key in ("model_version", "project_tasks", "complete"))
    return (
        str(version.value) if version is not None else None,
        int(tasks.value) if tasks is not None else None,
        complete is None or bool(complete.value),  # recorded before passes could stop early: finished
    )


def _stale(context: SensorEvaluationContext, loopml: LoopMLResource, function: str, primary: str) -> str | None:
    """Why the function's pre-annotations are behind (``new-primary``, ``unfinished`` or ``new-tasks``), or
    None. A pass superseded by a newer primary is not waited on: the sensor's next tick asks for the new one."""
    from loopml.labelstudio import LabelStudioError, LabelStudioUnavailable

    version, tasks, complete = _last_preannotation(context, function)
    if version != primary:
        return "new-primary"
    if not complete:  # the primary moved on and came back (a rollback) before its pass finished
        return "unfinished"
    project = loopml.registry().get(function).labelstudio_project_id
    if project is None:
        return None
    try:
        count = loopml.labelstudio().task_fingerprint(project)[1]
    except (LabelStudioUnavailable, LabelStudioError) as error:
        context.log.warning(f"task count of {function} not checked: {error}")
        return None
    return "new-tasks" if count != tasks else None


def _recent_run(context: SensorEvaluationContext, function: str) -> bool:
    """A pre-annotation run of the function in flight, or one that failed less than RETRY_AFTER_SECONDS ago (a
    run that stopped because its version was superseded succeeded: it is not waited for)."""
    runs = context.instance.get_run_records(
        filters=RunsFilter(job_name=preannotate_function.name, tags={"dagster/partition": function}), limit=1
    )
    if not runs:
        return False
    run = runs[0]
    if run.dagster_run.status in ACTIVE_STATUSES:
        return True
    ended = run.end_time or run.create_timestamp.timestamp()
    return run.dagster_run.status == DagsterRunStatus.FAILURE and time.time() - ended < RETRY_AFTER_SECONDS


@sensor(job=preannotate_function, minimum_interval_seconds=10, default_status=DefaultSensorStatus.RUNNING)
def preannotation_sensor(context: SensorEvaluationContext, loopml: LoopMLResource) -> SensorResult | SkipReason:
    """When a function's primary differs from the version of its last successful pre-annotation (a first
    model, a promotion, a rollback), pre-annotate again; likewise when the project's task count moved (tasks
    imported, calls sent for review), for the tasks without the primary's answer. A run whose version stopped
    being the primary stops early and successfully, and the next tick asks for the new primary's pass at once;
    a failed run is retried after a pause."""
    known = set(context.instance.get_dynamic_partitions(functions_partitions.name))
    current = {
        s.function: s.primary_tag
        for s in DeploymentStore(loopml.settings()).all()
        if s.primary_tag and s.function in known
    }
    idle = {fn: tag for fn, tag in current.items() if not _recent_run(context, fn)}
    wanted = {fn: (tag, why) for fn, tag in idle.items() if (why := _stale(context, loopml, fn, tag))}
    if not wanted:
        pending = len(current) - len(idle)
        return SkipReason(f"pre-annotations current ({len(current)} functions serving, {pending} running)")
    return SensorResult(
        run_requests=[
            RunRequest(partition_key=fn, tags={"loopml/primary": tag, "loopml/trigger": why})
            for fn, (tag, why) in wanted.items()
        ]
    )
