"""Sensors that follow the loop: inspect each new model, and refresh pre-annotations when the primary changes."""

import json

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
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


@sensor(job=preannotate_function, minimum_interval_seconds=10, default_status=DefaultSensorStatus.RUNNING)
def preannotation_sensor(context: SensorEvaluationContext, loopml: LoopMLResource) -> SensorResult | SkipReason:
    """When a function gets a new primary (first model or a promotion), re-run its pre-annotations."""
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(functions_partitions.name))
    current = {
        s.function: s.primary_tag
        for s in DeploymentStore(loopml.settings()).all()
        if s.primary_tag and s.function in known
    }
    changed = {fn: tag for fn, tag in current.items() if seen.get(fn) != tag}
    if not changed:
        return SkipReason(f"no new primary ({len(current)} functions serving)")
    return SensorResult(
        run_requests=[
            RunRequest(partition_key=fn, run_key=f"preannotate:{tag}", tags={"loopml/primary": tag})
            for fn, tag in changed.items()
        ],
        cursor=json.dumps(seen | changed),
    )
