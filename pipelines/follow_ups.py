"""Sensors that follow the loop: inspect each new model, and refresh pre-annotations when the primary changes."""

import time

from dagster import (
    AssetKey,
    AssetRecordsFilter,
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
    minimum_interval_seconds=5,
)
def inspect_after_training(context: RunStatusSensorContext) -> RunRequest | SkipReason:
    """After every successful training run, look for likely label errors with the new model's predictions."""
    function = context.dagster_run.tags.get("dagster/partition")
    if not function:
        return SkipReason("training run without a function partition")
    return RunRequest(
        partition_key=function,
        run_key=f"inspect:{context.dagster_run.run_id}",
        tags={"loopml/trigger": "trained"},
    )


RETRY_AFTER_SECONDS = 120  # a failed pre-annotation run (Label Studio down, say) is retried after this


def _preannotated_version(context: SensorEvaluationContext, function: str) -> str | None:
    """The model version of the function's last successful pre-annotation."""
    records = context.instance.fetch_materializations(
        records_filter=AssetRecordsFilter(asset_key=AssetKey("preannotations"), asset_partitions=[function]),
        limit=1,
    ).records
    if not records:
        return None
    entry = records[0].asset_materialization.metadata.get("model_version")
    return str(entry.value) if entry is not None else None


def _recent_run(context: SensorEvaluationContext, function: str) -> bool:
    """A pre-annotation run of the function in flight, or one that failed less than RETRY_AFTER_SECONDS ago."""
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
    model, a promotion, a rollback), pre-annotate again; a failed run is retried after a pause."""
    known = set(context.instance.get_dynamic_partitions(functions_partitions.name))
    current = {
        s.function: s.primary_tag
        for s in DeploymentStore(loopml.settings()).all()
        if s.primary_tag and s.function in known
    }
    stale = {fn: tag for fn, tag in current.items() if _preannotated_version(context, fn) != tag}
    wanted = {fn: tag for fn, tag in stale.items() if not _recent_run(context, fn)}
    if not wanted:
        return SkipReason(f"pre-annotations current ({len(current)} functions serving, {len(stale)} pending)")
    return SensorResult(
        run_requests=[
            RunRequest(partition_key=fn, tags={"loopml/primary": tag, "loopml/trigger": "new-primary"})
            for fn, tag in wanted.items()
        ]
    )
