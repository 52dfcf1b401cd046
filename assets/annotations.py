"""annotations: incremental pull of a function's Label Studio annotations."""

import time

import polars as pl
from dagster import AssetExecutionContext, AssetKey, MetadataValue, Output, asset

from assets.io_manager import asset_path
from assets.partitions import functions_partitions
from assets.resources import LoopMLResource, retried_when_labelstudio_is_down
from loopml.annotations import PulledTask, empty_annotations, merge_annotations
from loopml.functions import input_key
from loopml.warmup import warm_imports

CURSOR_KEY = "labelstudio_cursor"
TASK_COUNT_KEY = "labelstudio_tasks"


def previous_pull(context: AssetExecutionContext) -> tuple[str | None, int | None]:
    """The Label Studio cursor and task count recorded by this partition's last materialization.

    Recorded as metadata, so they exist only once the pulled data was stored.
    """
    records = context.instance.fetch_materializations(
        records_filter=_records_filter(context.partition_key), limit=1
    ).records
    event = records[0].event_log_entry if records else None
    if event is None or event.asset_materialization is None:
        return None, None
    metadata = event.asset_materialization.metadata
    cursor = metadata.get(CURSOR_KEY)
    count = metadata.get(TASK_COUNT_KEY)
    return (
        str(cursor.value) if cursor is not None and cursor.value else None,
        int(count.value) if count is not None else None,
    )


def _records_filter(partition: str):  # noqa: ANN202 - dagster type import kept local
    from dagster import AssetRecordsFilter

    return AssetRecordsFilter(asset_key=AssetKey("annotations"), asset_partitions=[partition])


@asset(
    partitions_def=functions_partitions,
    group_name="annotate",
    io_manager_key="loopml_io",
    kinds={"labelstudio", "polars"},
)
@retried_when_labelstudio_is_down
def annotations(context: AssetExecutionContext, loopml: LoopMLResource) -> Output[pl.DataFrame]:
    """Every annotation of the function's Label Studio project, pulled incrementally.

    Only tasks updated since the last pull are read; their annotations replace the old ones (edits), tasks
    that no longer have annotations are dropped (deletions), and skipped tasks are kept as skipped rows.
    Keeps who annotated and when. The cursor is Label Studio's task ``updated_at``.
    """
    warm_imports()  # validation and training modules load while Label Studio answers
    function = context.partition_key
    settings = loopml.settings()
    spec = loopml.registry().get(function)
    if spec.labelstudio_project_id is None:
        raise ValueError(
            f"function {function!r} has no Label Studio project; recreate it with `loopml functions create`"
        )
    client = loopml.labelstudio()
    started = time.perf_counter()

    stored = asset_path(settings.data_dir, "annotations", function, ".parquet")
    cursor, task_count = previous_pull(context) if stored.exists() else (None, None)
    previous = pl.read_parquet(stored) if stored.exists() else empty_annotations()

    key = input_key(spec.input_type)  # the input: a text, or an image as a data URI
    latest, tasks_now = client.task_fingerprint(spec.labelstudio_project_id)
    changed = client.changed_tasks(spec.labelstudio_project_id, since=cursor, upper=latest)
    # Deleted tasks leave no trace in updated_at: list the annotated tasks only when the task count moved.
    annotated_ids = client.annotated_task_ids(spec.labelstudio_project_id) if tasks_now != task_count else None
    pulled = [
        PulledTask(
            task_id=task.task_id,
            text=task.data.get(key),
            updated_at=task.updated_at,
            annotations=[
                {
                    "annotation_id": a.annotation_id,
                    "label": a.label,
                    "was_cancelled": a.was_cancelled,
                    "completed_by": a.completed_by,
                    "created_at": a.created_at,
                    "updated_at": a.updated_at,
                    "must_pass": a.must_pass,
                }
                for a in task.annotations
            ],
            source=str(task.meta.get("loopml_source", "annotation")),
        )
        for task in changed
    ]
    table = merge_annotations(previous, pulled, annotated_ids)
    new_cursor = max([cursor or "", *(task.updated_at for task in changed)]) or None
    removed = previous.filter(~pl.col("task_id").is_in(table["task_id"].to_list())).height
    return Output(
        table,
        metadata={
            CURSOR_KEY: new_cursor or "",
            TASK_COUNT_KEY: tasks_now,
            "tasks_changed": len(changed),
            "annotations": table.height,
            "annotated_tasks": table["task_id"].n_unique(),
            "skipped": int(table["was_cancelled"].sum()),
            "annotation_rows_removed": removed,
            "annotators": table["completed_by"].n_unique(),
            "pull_seconds": round(time.perf_counter() - started, 3),
            "labelstudio_project": MetadataValue.url(
                f"{settings.labelstudio_url}/projects/{spec.labelstudio_project_id}/data"
            ),
        },
    )
