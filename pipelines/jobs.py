"""Jobs over the lifecycle assets."""

from dagster import AssetSelection, define_asset_job, in_process_executor

TRAINING_ASSETS = AssetSelection.assets("annotations", "dataset", "features", "model", "deployment")

# One process per run: the stages are short, and separate step processes would each pay the imports.
train_function = define_asset_job(
    "train_function",
    selection=TRAINING_ASSETS,
    executor_def=in_process_executor,
    description="Pull annotations, validate, embed, train and gate/deploy one function (one partition).",
    # a run whose process crashed is retried once; a run that failed on data (a failed check) is not
    tags={"dagster/max_retries": 1, "dagster/retry_on_asset_or_op_failure": "false"},
)

inspect_function = define_asset_job(
    "inspect_function",
    selection=AssetSelection.assets("label_issues"),
    executor_def=in_process_executor,
    description="Find likely annotation errors of one function's newest model and send them back for re-review.",
)

preannotate_function = define_asset_job(
    "preannotate_function",
    selection=AssetSelection.assets("preannotations"),
    executor_def=in_process_executor,
    description="Pre-annotate every unlabelled Label Studio task of one function with its serving primary.",
)

monitor_function = define_asset_job(
    "monitor_function",
    selection=AssetSelection.assets("drift_report", "review_set"),
    executor_def=in_process_executor,
    description="Drift report of one function's recent calls, then sample calls for human review.",
)

review_function = define_asset_job(
    "review_function",
    selection=AssetSelection.assets("review_set"),
    executor_def=in_process_executor,
    description="Sample one function's recent calls for human review (the drift sensor raises the budget).",
)
