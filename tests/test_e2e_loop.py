"""The first half of the loop against a real Label Studio: annotate -> sensor -> run -> registered version."""

from __future__ import annotations

import json

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context

from loopml.functions import FunctionRegistry, create_function
from pipelines.definitions import defs
from pipelines.sensors import annotation_sensor
from serving.model_store import list_versions
from tests.test_pipeline import NEGATIVE, POSITIVE, skipped

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(autouse=True)
def polling(monkeypatch):
    """Each tick polls Label Studio (these tests save annotations through the API, not through a webhook)."""
    monkeypatch.setenv("LOOPML_ANNOTATION_POLL_SECONDS", "0")


def tick(instance: DagsterInstance, cursor: str | None):
    context = build_sensor_context(cursor=cursor, instance=instance, resources={"loopml": defs.resources["loopml"]})
    return annotation_sensor(context)


def train(instance: DagsterInstance, function: str):
    job = defs.resolve_job_def("train_function")
    return job.execute_in_process(instance=instance, partition_key=function, raise_on_error=False)


def dataset_labels(result) -> dict[str, str]:
    data = result.output_for_node("dataset")
    return dict(zip(data["text"].to_list(), data["label"].to_list(), strict=True))


def test_annotations_in_label_studio_become_a_registered_model(labelstudio) -> None:
    settings, client = labelstudio.settings, labelstudio.client
    project = create_function(settings, "e2e-sentiment", "text", "positive,negative")
    assert FunctionRegistry(settings).get("e2e-sentiment").labelstudio_project_id == project
    texts = POSITIVE + NEGATIVE + ["still unlabelled"]
    assert client.import_tasks(project, [{"data": {"text": t}} for t in texts]) == len(texts)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("functions", ["e2e-sentiment"])

    first = tick(instance, None)
    assert skipped(first) is not None  # imported, nothing annotated yet

    tasks = {t.data["text"]: t.task_id for t in client.unlabeled_tasks(project, limit=100)}
    annotation_ids = {
        text: client.create_annotation(tasks[text], "positive" if text in POSITIVE else "negative")
        for text in POSITIVE + NEGATIVE
    }
    requested = tick(instance, None)
    assert isinstance(requested, SensorResult)
    assert [r.partition_key for r in requested.run_requests] == ["e2e-sentiment"]
    cursor = requested.cursor

    result = train(instance, "e2e-sentiment")
    assert result.success
    model = result.output_for_node("model")
    assert model["tag"] == "e2e-sentiment:v1"
    assert model["cv_accuracy"] >= 0.7 and model["cv_macro_f1"] >= 0.6
    assert set(model["per_label"]) == {"positive", "negative"}
    assert [v.tag for v in list_versions(settings, "e2e-sentiment")] == ["e2e-sentiment:v1"]
    assert skipped(tick(instance, cursor)) is not None  # nothing changed since

    # an edit changes the dataset, a deletion leaves it, a skip adds nothing
    client.update_annotation(annotation_ids[POSITIVE[0]], "negative")
    client.delete_annotation(annotation_ids[NEGATIVE[0]])
    client.skip_task(tasks["still unlabelled"])
    changed = tick(instance, cursor)
    assert isinstance(changed, SensorResult)
    cursor = changed.cursor
    second = train(instance, "e2e-sentiment")
    assert second.success
    labels = dataset_labels(second)
    assert labels[POSITIVE[0]] == "negative"
    assert NEGATIVE[0] not in labels and "still unlabelled" not in labels
    assert second.output_for_node("model")["tag"] == "e2e-sentiment:v2"
    pulled = second.asset_materializations_for_node("annotations")[0].metadata
    assert pulled["tasks_changed"].value == 3 and pulled["skipped"].value == 1

    # Label Studio down: the sensor skips with the reason and keeps its cursor; nothing is lost
    client.create_annotation(tasks[NEGATIVE[0]], "negative")
    labelstudio.stop()
    try:
        down = tick(instance, cursor)
        assert skipped(down) is not None
        assert "not reachable" in down.skip_message and "loopml up" in down.skip_message
        failed = train(instance, "e2e-sentiment")
        assert not failed.success  # the run fails cleanly; the stored annotations stay as they were
    finally:
        labelstudio.start()
    back = tick(instance, cursor)
    assert isinstance(back, SensorResult) and json.loads(back.cursor) != json.loads(cursor)
    third = train(instance, "e2e-sentiment")
    assert third.success
    assert dataset_labels(third)[NEGATIVE[0]] == "negative"


def test_low_confidence_calls_go_to_review_in_label_studio_and_come_back_as_training_data(labelstudio) -> None:
    """invocations with low confidence -> review tasks with predictions in a real Label Studio -> annotated ->
    dataset (source `review`) -> retrained."""
    from loopml.encoders import get_encoder
    from loopml.invocation_log import InvocationLog, InvocationRecord, embedding_to_bytes

    settings, client = labelstudio.settings, labelstudio.client
    project = create_function(settings, "e2e-review", "text", "positive,negative")
    client.import_tasks(project, [{"data": {"text": t}} for t in POSITIVE + NEGATIVE])
    for task in client.unlabeled_tasks(project, limit=100):
        client.create_annotation(task.task_id, "positive" if task.data["text"] in POSITIVE else "negative")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("functions", ["e2e-review"])
    assert train(instance, "e2e-review").success

    unsure = ["a strange film that I cannot place", "parts of it worked, parts of it did not"]
    log = InvocationLog(settings)
    log.log_many(
        [
            InvocationRecord(
                function="e2e-review",
                input_text=text,
                embedding=embedding_to_bytes(vector),
                scores={"e2e-review:v1": [0.52, 0.48]},
                labels={"e2e-review:v1": ["positive", "negative"]},
                answered_by="e2e-review:v1",
                label="positive",
                confidence=0.52,
                latency_ms=4.0,
            )
            for text, vector in zip(unsure, get_encoder().encode(unsure), strict=True)
        ]
    )
    log.close()
    review = defs.resolve_job_def("review_function").execute_in_process(instance=instance, partition_key="e2e-review")
    assert review.success
    chosen = review.output_for_node("review_set")
    assert set(chosen["input_text"]) == set(unsure)
    assert all("low_confidence" in reasons for reasons in chosen["reasons"].to_list())  # (a young model: the
    reason_of = dict(zip(chosen["input_text"], chosen["reason"], strict=True))  # calls may be chosen as unfamiliar)

    pending = {t.data["text"]: t for t in client.unlabeled_tasks(project, limit=100)}
    assert set(unsure) <= set(pending)
    task = pending[unsure[0]]
    assert task.meta["loopml_source"] == "review" and task.data["review_reason"] == reason_of[unsure[0]]
    (prediction,) = client.task_predictions(task.task_id)
    assert (prediction["model_version"], prediction["label"]) == ("e2e-review:v1", "positive")
    assert prediction["score"] == 0.52

    client.create_annotation(task.task_id, "negative")  # the reviewer corrects the model
    retrained = train(instance, "e2e-review")
    assert retrained.success
    data = retrained.output_for_node("dataset")
    row = data.filter(data["text"] == unsure[0]).to_dicts()[0]
    assert (row["source"], row["label"]) == ("review", "negative")
    assert retrained.output_for_node("model")["tag"] == "e2e-review:v2"


def test_add_and_remove_a_label_through_the_cli_path_updates_label_studio(labelstudio) -> None:
    from loopml.evolution import add_label, remove_label, removed_labels
    from loopml.functions import FunctionError, labels_from_label_config

    settings, client = labelstudio.settings, labelstudio.client
    project = create_function(settings, "e2e-evolve", "text", "positive,negative")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("functions", ["e2e-evolve"])
    client.import_tasks(project, [{"data": {"text": t}} for t in POSITIVE[:2]])
    client.create_annotation(client.unlabeled_tasks(project, limit=10)[0].task_id, "positive")
    first = tick(instance, None)
    assert isinstance(first, SensorResult) and first.run_requests[0].tags["loopml/trigger"] == "annotations"
    assert skipped(tick(instance, first.cursor)) is not None

    change = add_label(settings, "e2e-evolve", "neutral")
    assert change.added == ["neutral"] and not change.removed
    assert labels_from_label_config(client.get_label_config(project)) == ["positive", "negative", "neutral"]
    assert FunctionRegistry(settings).get("e2e-evolve").labels == ["positive", "negative", "neutral"]
    with pytest.raises(FunctionError, match="already has"):
        add_label(settings, "e2e-evolve", "neutral")
    added = tick(instance, first.cursor)  # a new label set is something new to train on
    assert isinstance(added, SensorResult) and added.run_requests[0].tags["loopml/trigger"] == "label-set"
    assert skipped(tick(instance, added.cursor)) is not None

    remove_label(settings, "e2e-evolve", "negative")
    assert labels_from_label_config(client.get_label_config(project)) == ["positive", "neutral"]
    assert removed_labels(settings, "e2e-evolve") == {"negative"}
    removed = tick(instance, added.cursor)  # the next version leaves the removed label's annotations out
    assert isinstance(removed, SensorResult) and removed.run_requests[0].tags["loopml/trigger"] == "label-set"
    with pytest.raises(FunctionError, match="at least 2 labels"):
        remove_label(settings, "e2e-evolve", "neutral")
