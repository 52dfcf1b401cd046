"""The Dagster Definitions: every lifecycle asset, job, sensor and schedule, and the resources."""

from dagster import Definitions

from assets.annotations import annotations
from assets.dataset import dataset
from assets.deployment import deployment
from assets.features import features
from assets.inspection import label_issues
from assets.io_manager import LoopMLIOManager
from assets.model import model
from assets.preannotations import preannotations
from assets.resources import LoopMLResource
from pipelines.canary import canary_controller
from pipelines.follow_ups import inspect_after_training, preannotation_sensor
from pipelines.jobs import inspect_function, preannotate_function, train_function
from pipelines.schedules import nightly_retraining
from pipelines.sensors import annotation_sensor, function_discovery_sensor

defs = Definitions(
    assets=[annotations, dataset, features, model, deployment, preannotations, label_issues],
    jobs=[train_function, inspect_function, preannotate_function],
    sensors=[
        function_discovery_sensor,
        annotation_sensor,
        canary_controller,
        inspect_after_training,
        preannotation_sensor,
    ],
    schedules=[nightly_retraining],
    resources={"loopml": LoopMLResource(), "loopml_io": LoopMLIOManager()},
)
