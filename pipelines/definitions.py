"""The Dagster Definitions: every lifecycle asset, job, sensor and schedule, and the resources."""

from dagster import AssetSpec, Definitions

from assets.annotations import annotations
from assets.dataset import dataset
from assets.deep_model import deep_model
from assets.deployment import deep_deployment, deployment
from assets.features import features
from assets.inspection import label_issues
from assets.io_manager import LoopMLIOManager
from assets.model import model
from assets.monitoring import drift_report
from assets.preannotations import preannotations
from assets.resources import LoopMLResource
from assets.review import review_set
from pipelines.canary import canary_controller
from pipelines.drift import drift_sensor
from pipelines.follow_ups import inspect_after_training, preannotation_sensor
from pipelines.jobs import (
    deploy_function,
    inspect_function,
    monitor_function,
    preannotate_function,
    review_function,
    train_deep_function,
    train_function,
)
from pipelines.schedules import hourly_monitoring, nightly_deep_training, nightly_retraining
from pipelines.sensors import annotation_sensor, function_discovery_sensor

# Written by the serving API, not by Dagster: shown in the graph so the data flow reads end to end.
invocations = AssetSpec(
    "invocations",
    group_name="serve",
    deps=["deployment"],
    description="Every answered call, logged by the serving API (platform database, `invocations` table): input, "
    "embedding, scores of each version, answer, latency, feedback.",
    kinds={"bentoml", "sqlite"},
)

defs = Definitions(
    assets=[
        annotations,
        dataset,
        features,
        model,
        deployment,
        invocations,
        preannotations,
        label_issues,
        review_set,
        drift_report,
        deep_model,
        deep_deployment,
    ],
    jobs=[
        train_function,
        deploy_function,
        inspect_function,
        preannotate_function,
        monitor_function,
        review_function,
        train_deep_function,
    ],
    sensors=[
        function_discovery_sensor,
        annotation_sensor,
        canary_controller,
        inspect_after_training,
        preannotation_sensor,
        drift_sensor,
    ],
    schedules=[nightly_retraining, nightly_deep_training, hourly_monitoring],
    resources={"loopml": LoopMLResource(), "loopml_io": LoopMLIOManager()},
)
