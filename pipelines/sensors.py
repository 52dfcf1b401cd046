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
from loopml.labelstudio import LabelStudioUnavailable
from loopml.loop_signals import annotation_part, annotation_signature, labels_changed, training_signature
from pipelines.jobs import train_function

ACTIVE_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


# `loopml functions create` adds the function's partition itself; this sensor is the fallback for a partition
# that call could not add (Dagster down, say) and adopts label sets edited in Label Studio's UI. A look costs a
# Label Studio request per function, so it looks every 30 s: idle, it was a tenth of the platform's CPU at 5 s.
DISCOVERY_TICK_SECONDS = 30


@sensor(minimum_interval_seconds=DISCOVERY_TICK_SECONDS, default_status=DefaultSensorStatus.RUNNING)
def function_discovery_sensor(context: SensorEvaluationContext, loopml: LoopMLResource) -> SensorResult | SkipReason:
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


def failed_on_labelstudio(context: SensorEvaluationContext, function: str, signature: str) -> str | None:
    """The id of ``function``'s latest training run when it failed because Label Studio stayed unreachable through
    every step retry (``assets/resources.py`` tags it) while training ``signature``, the annotations still current;
    else None. The sensor then asks for the training again: its changes are not lost to an outage."""
    from assets.resources import FAILED_ON_TAG

    records = context.instance.get_run_records(
        filters=RunsFilter(job_name=train_function.name, tags={"dagster/partition": function}), limit=1
    )
    if not records:
        return None
    run = records[0].dagster_run
    if (
        run.status == DagsterRunStatus.FAILURE
        and run.tags.get(FAILED_ON_TAG) == "labelstudio"
        and run.tags.get("loopml/signature") == signature
    ):
        return run.run_id
    return None


def has_active_run(context: SensorEvaluationContext, function: str) -> bool:
    """Whether a training run of ``function`` is queued or running. A run whose forked process is gone does not
    count (run monitoring marks it failed within seconds and run retries start it again; the sensor need not wait
    for that to happen)."""
    from loopml.services import pid_alive
    from pipelines.run_worker import PID_TAG

    records = context.instance.get_run_records(
        filters=RunsFilter(
            job_name=train_function.name,
            statuses=ACTIVE_STATUSES,
            tags={"dagster/partition": function},
        ),
        limit=5,
    )
    for record in records:
        pid = record.dagster_run.tags.get(PID_TAG)
        if record.dagster_run.status != DagsterRunStatus.STARTED or pid is None or pid_alive(int(pid)):
            return True
    return False


# Every 5 seconds; and at once when a webhook signal file changes: the daemon's sensor loop wakes on it and lets this
# sensor tick inside its interval (pipelines/daemon.py), so a longer interval costs an annotation no latency, and an
# idle platform far fewer ticks (each one a call to the code server and a row in Dagster's storage). A tick reads
# only the signal files unless one moved or the poll interval passed.
SENSOR_TICK_SECONDS = 5
SIGNAL_GRACE_SECONDS = 5.0  # a signal whose change Label Studio does not show yet is looked at again this long
POLLED_AT, SIGNALS = "~polled_at", "~signals"  # cursor entries beside the per-function signatures


def functions_to_check(
    cursor: dict, signals: dict[str, float], names: list[str], now: float, poll_seconds: float
) -> tuple[list[str], bool]:
    """Which functions to ask Label Studio about this tick, and whether this is a full poll: every function when
    the poll interval passed since the last full poll, else those whose webhook signal is newer than the one
    last acted on (young signals stay due for a few seconds: the hook can run before Label Studio commits)."""
    if now - float(cursor.get(POLLED_AT, 0.0)) >= poll_seconds:
        return list(names), True
    seen = cursor.get(SIGNALS, {})
    return [n for n in names if signals.get(n, 0.0) > float(seen.get(n, 0.0))], False


@sensor(
    job=train_function,
    minimum_interval_seconds=SENSOR_TICK_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
)
def annotation_sensor(context: SensorEvaluationContext, loopml: LoopMLResource) -> SensorResult | SkipReason:
    """Requests a training run for each function whose Label Studio annotations or label set changed.

    Label Studio's webhook (registered on each function's project) tells the serving API of every annotation
    change, which leaves a signal file; the daemon's sensor loop wakes when one changes (and passes every second
    anyway), so a changed function is asked about within tens of milliseconds.
    Every ``LOOPML_ANNOTATION_POLL_SECONDS`` (default 10) it also asks about every function, so changes are found
    without the webhook too.

    The cursor holds, per function, the training signature (annotations and label set) last acted on. When
    Label Studio is down the tick is skipped with the reason and the cursor stays put, so nothing is missed once
    it is back. A function with a run already queued or running waits for the next tick (its changes are not
    lost).
    """
    import time

    from loopml.loop_signals import annotation_signals

    settings = loopml.settings()
    cursor: dict = json.loads(context.cursor) if context.cursor else {}
    now = time.time()
    signals = annotation_signals(settings.run_dir)
    partitions = set(context.instance.get_dynamic_partitions(functions_partitions.name))
    functions = {f.name: f for f in loopml.registry().list() if f.name in partitions and f.labelstudio_project_id}
    if not functions:
        return SkipReason("no functions with a Label Studio project yet; create one with `loopml functions create`")
    names, full_poll = functions_to_check(cursor, signals, sorted(functions), now, settings.annotation_poll_seconds)
    if not names:
        return SkipReason("no webhook signal since the last poll")
    try:
        client = loopml.labelstudio()
        client.ensure_reachable()
        signatures = {
            name: training_signature(
                annotation_signature(
                    client, functions[name].labelstudio_project_id, previous=annotation_part(cursor.get(name))
                ),
                functions[name].labels,
            )
            for name in names
        }
    except LabelStudioUnavailable as error:
        return SkipReason(f"{error}; the cursor did not advance, changes will be picked up once it is back")

    requests: list[RunRequest] = []
    new_cursor = dict(cursor)
    seen = dict(cursor.get(SIGNALS, {}))
    busy: list[str] = []
    for name, signature in signatures.items():
        changed = signature is not None and signature != cursor.get(name)
        again = None if changed or signature is None else failed_on_labelstudio(context, name, signature)
        if (changed or again) and has_active_run(context, name):
            busy.append(name)
            continue
        if again is not None:  # its training gave up while Label Studio was down; Label Studio answers now
            requests.append(
                RunRequest(
                    partition_key=name,
                    run_key=f"{name}:{signature}:after-{again[:8]}",
                    tags={"loopml/trigger": "labelstudio-back", "loopml/signature": signature},
                )
            )
            continue
        if changed or full_poll or now - signals.get(name, now) > SIGNAL_GRACE_SECONDS:
            seen[name] = signals.get(name, 0.0)  # this signal was acted on (or polling covers it from now)
        if not changed:
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
    new_cursor[SIGNALS] = seen
    if full_poll:
        new_cursor[POLLED_AT] = now
    new = json.dumps(new_cursor, sort_keys=True)
    if not requests:
        reason = f"waiting for running training of {busy}" if busy else f"no annotation changes in {names}"
        return SensorResult(skip_reason=reason, cursor=new)
    return SensorResult(run_requests=requests, cursor=new)
