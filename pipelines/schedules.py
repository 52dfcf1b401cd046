"""Schedules: nightly retraining of every function."""

import os
from collections.abc import Iterator

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, schedule

from assets.partitions import functions_partitions
from pipelines.jobs import monitor_function, train_function


@schedule(
    job=train_function,
    cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Retrain every function nightly (03:00), whether or not its annotations changed.",
)
def nightly_retraining(context: ScheduleEvaluationContext) -> Iterator[RunRequest]:
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for function in context.instance.get_dynamic_partitions(functions_partitions.name):
        yield RunRequest(
            partition_key=function, run_key=f"nightly:{function}:{day}", tags={"loopml/trigger": "nightly"}
        )


@schedule(
    job=monitor_function,
    cron_schedule=os.environ.get("LOOPML_MONITOR_CRON", "7 * * * *"),
    default_status=DefaultScheduleStatus.RUNNING,
    description="Every hour (LOOPML_MONITOR_CRON): a drift report per function, then a sample of its calls sent "
    "for review.",
)
def hourly_monitoring(context: ScheduleEvaluationContext) -> Iterator[RunRequest]:
    hour = context.scheduled_execution_time.strftime("%Y-%m-%dT%H")
    for function in context.instance.get_dynamic_partitions(functions_partitions.name):
        yield RunRequest(partition_key=function, run_key=f"hourly:{function}:{hour}", tags={"loopml/trigger": "hourly"})
