"""Jobs over the lifecycle assets: each runs one function (one partition) in one process."""

from typing import Any

from dagster import AssetSelection, define_asset_job, in_process_executor


def function_job(name: str, assets: tuple[str, ...], description: str, **tags: Any) -> Any:
    """A job over ``assets`` for one function. In-process: the stages are short, and separate step processes
    would each pay the imports."""
    return define_asset_job(
        name,
        selection=AssetSelection.assets(*assets),
        executor_def=in_process_executor,
        description=description,
        tags=tags or None,
    )


train_function = function_job(
    "train_function",
    ("annotations", "dataset", "features", "model", "deployment"),
    "Pull annotations, validate, embed, train and gate/deploy one function (one partition).",
    # a run whose process crashed is retried once; a run that failed on data (a failed check) is not
    **{"dagster/max_retries": 1, "dagster/retry_on_asset_or_op_failure": "false"},
)
train_deep_function = function_job(
    "train_deep_function",
    ("deep_model", "deep_deployment"),
    "Image functions: fine-tune the backbone's last block and a head (the deep tier, minutes), keep it only when "
    "cross-validation says it beats the AutoML version, and gate/roll it out like any version.",
)
deploy_function = function_job(
    "deploy_function",
    ("deployment",),
    "Gate one function's newest version against its primary and roll it out (requested when a rollout ends "
    "with a newer version waiting).",
)
inspect_function = function_job(
    "inspect_function",
    ("label_issues",),
    "Find likely annotation errors of one function's newest model and send them back for re-review.",
)
preannotate_function = function_job(
    "preannotate_function",
    ("preannotations",),
    "Pre-annotate every unlabelled Label Studio task of one function with its serving primary.",
)
monitor_function = function_job(
    "monitor_function",
    ("drift_report", "review_set"),
    "Drift report of one function's recent calls, then sample calls for human review.",
)
review_function = function_job(
    "review_function",
    ("review_set",),
    "Sample one function's recent calls for human review (the drift sensor raises the budget).",
)
