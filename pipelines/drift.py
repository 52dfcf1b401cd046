"""The drift sensor: when a drift report finds drift, look harder (a larger review sample) and, if configured,
retrain."""

import os

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.review import BUDGET_TAG, SINCE_TAG, review_budget
from pipelines.jobs import review_function, train_function

BUDGET_FACTOR_ENV = "LOOPML_DRIFT_REVIEW_FACTOR"  # review budget multiplier after drift (default 4)
RETRAIN_ENV = "LOOPML_RETRAIN_ON_DRIFT"  # "true": also request a retraining run


def _value(metadata: dict, key: str) -> object:
    entry = metadata.get(key)
    return getattr(entry, "value", entry)


@sensor(
    jobs=[review_function, train_function],
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
)
def drift_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    """Reads new `drift_report` materializations; on drift it requests a review run with a raised budget
    over the drifted window and, with LOOPML_RETRAIN_ON_DRIFT=true, a retraining run."""
    after = int(context.cursor or 0)
    records = context.instance.fetch_materializations(
        records_filter=AssetRecordsFilter(asset_key=AssetKey("drift_report"), after_storage_id=after or None),
        limit=100,
        ascending=True,
    ).records
    if not records:
        return SkipReason("no new drift reports")
    requests = []
    for record in records:
        metadata = dict(record.asset_materialization.metadata)
        function = record.asset_materialization.partition
        if not function or not _value(metadata, "drifted"):
            continue
        budget = review_budget(function) * int(os.environ.get(BUDGET_FACTOR_ENV, "4"))
        context.log.warning(f"{function}: drift detected ({_value(metadata, 'message')}); review budget {budget}")
        requests.append(
            RunRequest(
                job_name=review_function.name,
                partition_key=function,
                run_key=f"drift-review:{record.storage_id}",
                tags={
                    BUDGET_TAG: str(budget),
                    SINCE_TAG: str(_value(metadata, "window_start") or ""),
                    "loopml/trigger": "drift",
                },
            )
        )
        if os.environ.get(RETRAIN_ENV, "").lower() in ("1", "true", "yes"):
            requests.append(
                RunRequest(
                    job_name=train_function.name,
                    partition_key=function,
                    run_key=f"drift-retrain:{record.storage_id}",
                    tags={"loopml/trigger": "drift"},
                )
            )
    cursor = str(records[-1].storage_id)
    if not requests:
        return SensorResult(skip_reason=f"{len(records)} new drift reports, no drift", cursor=cursor)
    return SensorResult(run_requests=requests, cursor=cursor)
