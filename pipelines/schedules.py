"""Schedules: nightly retraining (and the deep tiers) and hourly monitoring of every function that serves a
model."""

import os
from collections.abc import Iterator

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from assets.deep_model import TEXT_DEEP_ENV
from assets.partitions import functions_partitions
from assets.resources import LoopMLResource
from loopml.config import env_flag
from loopml.deployments import DeploymentStore
from pipelines.jobs import monitor_function, train_deep_function, train_function


def serving_functions(context: ScheduleEvaluationContext, loopml: LoopMLResource) -> tuple[list[str], list[str]]:
    """The functions (partitions) that serve a model, and those that do not yet. A function without a model has
    no dataset, no calls and nothing to retrain on a clock: its first version comes from the annotation sensor
    once it has enough annotations, and a scheduled run would only fail."""
    serving = {s.function for s in DeploymentStore(loopml.settings()).all() if s.primary_tag}
    known = context.instance.get_dynamic_partitions(functions_partitions.name)
    return [f for f in known if f in serving], [f for f in known if f not in serving]


def _skip(waiting: list[str]) -> SkipReason:
    return SkipReason(f"no function serves a model yet ({', '.join(waiting) or 'none created'})")


@schedule(
    job=train_function,
    cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Retrain every function that serves a model nightly (03:00), whether or not its annotations changed.",
)
def nightly_retraining(context: ScheduleEvaluationContext, loopml: LoopMLResource) -> Iterator[RunRequest | SkipReason]:
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    serving, waiting = serving_functions(context, loopml)
    if not serving:
        yield _skip(waiting)
    for function in serving:
        yield RunRequest(
            partition_key=function, run_key=f"nightly:{function}:{day}", tags={"loopml/trigger": "nightly"}
        )


@schedule(
    job=train_deep_function,
    cron_schedule=os.environ.get("LOOPML_DEEP_CRON", "0 4 * * *"),
    default_status=DefaultScheduleStatus.RUNNING,
    description="Nightly (04:00, LOOPML_DEEP_CRON), for every image function that serves a model (and every text "
    "function with LOOPML_TEXT_DEEP=1): the deep tier (a fine-tuned network tail) trains in its own run and is kept "
    "only when cross-validation says it is better.",
)
def nightly_deep_training(
    context: ScheduleEvaluationContext, loopml: LoopMLResource
) -> Iterator[RunRequest | SkipReason]:
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    serving, waiting = serving_functions(context, loopml)
    registry = loopml.registry()
    kinds = {spec.name: spec.input_type for spec in registry.list()}
    tiers = ("image", "text") if env_flag(TEXT_DEEP_ENV) else ("image",)
    deep = [f for f in serving if kinds.get(f) in tiers]
    if not deep:
        yield SkipReason(f"no {' or '.join(tiers)} function serves a model yet") if serving else _skip(waiting)
    for function in deep:
        yield RunRequest(partition_key=function, run_key=f"deep:{function}:{day}", tags={"loopml/trigger": "nightly"})


@schedule(
    job=monitor_function,
    cron_schedule=os.environ.get("LOOPML_MONITOR_CRON", "7 * * * *"),
    default_status=DefaultScheduleStatus.RUNNING,
    description="Every hour (LOOPML_MONITOR_CRON): a drift report per function that serves a model, then a sample "
    "of its calls sent for review.",
)
def hourly_monitoring(context: ScheduleEvaluationContext, loopml: LoopMLResource) -> Iterator[RunRequest | SkipReason]:
    hour = context.scheduled_execution_time.strftime("%Y-%m-%dT%H")
    serving, waiting = serving_functions(context, loopml)
    if not serving:
        yield _skip(waiting)
    for function in serving:
        yield RunRequest(partition_key=function, run_key=f"hourly:{function}:{hour}", tags={"loopml/trigger": "hourly"})
