"""The lifecycle assets and sensors in-process, with Label Studio replaced by an in-memory fake."""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import replace

import pytest
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context, materialize

from assets.annotations import annotations
from assets.dataset import dataset
from assets.deployment import deployment
from assets.features import features
from assets.io_manager import LoopMLIOManager
from assets.model import model
from loopml.config import get_settings
from loopml.deployments import DeploymentStore
from loopml.functions import FunctionRegistry, FunctionSpec
from pipelines.sensors import annotation_sensor, function_discovery_sensor
from serving.model_store import list_versions, load_classifier
from tests.fakes import FAKES, FakeLabelStudio, FakeLoopMLResource

POSITIVE = [
    "I loved this film, wonderful acting",
    "a delightful and moving story",
    "brilliant, funny and warm",
    "one of the best movies of the year",
    "great performances and a clever script",
    "a joy to watch from start to finish",
]
NEGATIVE = [
    "a boring, tedious mess",
    "terrible acting and a dull plot",
    "I hated every minute of it",
    "the worst film I have seen",
    "painfully slow and badly written",
    "a waste of time and money",
]
ASSETS = [annotations, dataset, features, model, deployment]


@contextlib.contextmanager
def fake_function(tmp_path, monkeypatch, spec: FunctionSpec, tasks: list[dict], label_config: str = "<View/>"):
    """A fresh LOOPML_HOME and function ``spec`` registered with its project (holding ``tasks``) in a fake Label
    Studio, an ephemeral Dagster instance with its partition, and the resources: the ``env`` dict."""
    monkeypatch.setenv("LOOPML_HOME", str(tmp_path))
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    settings = get_settings()
    settings.ensure_dirs()
    key = uuid.uuid4().hex
    fake = FAKES.setdefault(key, FakeLabelStudio())
    try:
        project = fake.create_project(spec.name, label_config)
        fake.import_tasks(project, tasks)
        FunctionRegistry(settings).add(replace(spec, labelstudio_project_id=project))
        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("functions", [spec.name])
        resources = {"loopml": FakeLoopMLResource(fake_key=key), "loopml_io": LoopMLIOManager()}
        yield {
            "settings": settings,
            "fake": fake,
            "project": project,
            "instance": instance,
            "resources": resources,
            "function": spec.name,
        }
    finally:
        FAKES.pop(key, None)


@pytest.fixture
def env(request, tmp_path, monkeypatch):
    """A fresh LOOPML_HOME, a registered function whose project lives in a fake Label Studio (on the default
    encoder unless the test passes another encoder id as the fixture's parameter)."""
    encoder_id = getattr(request, "param", "minilm-l6-int8")
    spec = FunctionSpec("sentiment", "text", ["positive", "negative"], encoder_id)
    tasks = [{"data": {"text": t}} for t in POSITIVE + NEGATIVE + ["unlabelled one"]]
    with fake_function(tmp_path, monkeypatch, spec, tasks) as made:
        yield made


def annotate_all(fake: FakeLabelStudio, project: int) -> dict[str, int]:
    ids = {}
    for tid in fake.projects[project]:
        text = fake.tasks[tid].data["text"]
        if text in POSITIVE or text in NEGATIVE:
            ids[text] = fake.create_annotation(tid, "positive" if text in POSITIVE else "negative")
    return ids


def run(env, selection=ASSETS, raise_on_error=True):
    upstream = [a.to_source_asset() for a in ASSETS if a not in selection]
    return materialize(
        [*selection, *upstream],
        instance=env["instance"],
        partition_key=env["function"],
        resources=env["resources"],
        raise_on_error=raise_on_error,
    )


def test_annotations_to_registered_model(env) -> None:
    annotate_all(env["fake"], env["project"])
    result = run(env)
    assert result.success
    output = result.output_for_node("model")
    assert output["tag"] == "sentiment:v1"
    assert 0.5 <= output["cv_accuracy"] <= 1.0
    assert output["label_set"] == ["positive", "negative"]
    versions = list_versions(env["settings"], "sentiment")
    assert [v.version for v in versions] == ["v1"]
    assert versions[0].metadata["winner"] == output["winner"]
    classifier = load_classifier(env["settings"], "sentiment:v1")
    from loopml.encoders import get_encoder

    texts = ["an absolutely wonderful, moving film", "dull, boring and badly acted"]
    probs = classifier.predict_proba(texts, get_encoder("minilm-l6-int8").encode(texts))
    assert probs.shape == (2, 2)
    assert probs[0].argmax() == 0 and probs[1].argmax() == 1
    assert (versions[0].path / "oof_proba.parquet").exists()
    assert result.output_for_node("deployment")["decision"] == "primary"
    assert DeploymentStore(env["settings"]).get("sentiment").primary_tag == "sentiment:v1"
    metadata = result.asset_materializations_for_node("model")[0].metadata
    assert len(metadata["leaderboard"].value.records) >= 3
    # numbers Dagster plots across materializations: calibration, label count, F1 per label
    from dagster import FloatMetadataValue, IntMetadataValue

    assert isinstance(metadata["cv_ece"], FloatMetadataValue) and 0.0 <= metadata["cv_ece"].value <= 1.0
    assert metadata["cv_ece"].value == pytest.approx(output["cv_ece"], abs=1e-4)
    assert isinstance(metadata["labelled_items"], IntMetadataValue)
    assert metadata["labelled_items"].value == output["train_rows"] + output["holdout_rows"] == len(POSITIVE + NEGATIVE)
    for label in ("positive", "negative"):
        assert isinstance(metadata[f"f1_{label}"], FloatMetadataValue)
        assert metadata[f"f1_{label}"].value == pytest.approx(output["per_label"][label]["f1"])

    # second run: a new version; features come from the cache
    env["fake"].create_annotation(env["fake"].projects[env["project"]][-1], "positive")
    again = run(env)
    assert again.output_for_node("model")["tag"] == "sentiment:v2"
    feature_meta = again.asset_materializations_for_node("features")[0].metadata
    assert feature_meta["newly_embedded"].value == 1
    decided = again.output_for_node("deployment")
    state = DeploymentStore(env["settings"]).get("sentiment")
    if decided["decision"] == "canary":
        assert (state.primary_tag, state.canary_tag, state.canary_weight) == ("sentiment:v1", "sentiment:v2", 0.1)
    else:
        assert decided["decision"] == "rejected" and state.canary_tag is None


@pytest.mark.parametrize("env", ["e5-small-q4"], indirect=True)
def test_a_function_on_the_e5_encoder_trains_and_scores_with_it(env) -> None:
    """``functions create --encoder e5-small-q4``: features, model and the registered version use e5."""
    from loopml.encoders import E5_SMALL_ENCODER, get_encoder

    assert FunctionRegistry(env["settings"]).get("sentiment").encoder_id == E5_SMALL_ENCODER
    annotate_all(env["fake"], env["project"])
    result = run(env)
    assert result.asset_materializations_for_node("features")[0].metadata["encoder"].value == E5_SMALL_ENCODER
    classifier = load_classifier(env["settings"], result.output_for_node("model")["tag"])
    assert classifier.encoder_id == E5_SMALL_ENCODER
    texts = ["an absolutely wonderful, moving film", "dull, boring and badly acted"]
    probs = classifier.predict_proba(texts, get_encoder(E5_SMALL_ENCODER).encode(texts))
    assert probs[0].argmax() == 0 and probs[1].argmax() == 1


def candidate_with_flipped_labels(env) -> str:
    """Register a deliberately bad version (trained on flipped labels) as the model asset's latest output."""
    import pickle

    import numpy as np

    from assets.io_manager import asset_path
    from loopml.automl import run_automl
    from loopml.encoders import get_encoder
    from serving.model_store import save_model

    texts = POSITIVE + NEGATIVE
    flipped = ["negative"] * len(POSITIVE) + ["positive"] * len(NEGATIVE)
    result = run_automl(texts, get_encoder("minilm-l6-int8").encode(texts), flipped, ["positive", "negative"])
    result.model.encoder_id = "minilm-l6-int8"
    version = save_model(env["settings"], env["function"], result.model, {"note": "flipped"})
    path = asset_path(env["settings"].data_dir, "model", env["function"], ".pickle")
    path.write_bytes(pickle.dumps({"tag": version.tag}))
    assert np.isfinite(result.cv_accuracy)
    return version.tag


def test_the_gate_rejects_a_worse_candidate(env) -> None:
    fake, project = env["fake"], env["project"]
    extra = [
        (f"{text} (review {i})", label)
        for i in range(4)
        for texts, label in ((POSITIVE, "positive"), (NEGATIVE, "negative"))
        for text in texts
    ]
    fake.import_tasks(project, [{"data": {"text": text}} for text, _ in extra])
    annotate_all(fake, project)
    labels = dict(extra)
    for tid in fake.projects[project]:
        if fake.tasks[tid].data["text"] in labels:
            fake.create_annotation(tid, labels[fake.tasks[tid].data["text"]])
    assert run(env).success
    bad = candidate_with_flipped_labels(env)
    result = run(env, [deployment])
    decided = result.output_for_node("deployment")
    assert decided["decision"] == "rejected" and decided["candidate"] == bad
    assert "worse than the primary" in decided["reason"]
    check = result.get_asset_check_evaluations()[0]
    assert check.check_name == "gate" and not check.passed
    store = DeploymentStore(env["settings"])
    assert store.get("sentiment").primary_tag == "sentiment:v1" and store.get("sentiment").canary_tag is None
    assert store.history("sentiment")[-1].action == "reject"
    assert store.history("sentiment")[-1].reason.startswith(f"{bad} failed the gate: holdout accuracy")


def test_a_failing_must_pass_example_blocks_rollout(env, monkeypatch) -> None:
    monkeypatch.setenv("LOOPML_GATE_TOLERANCE", "1.0")  # accuracy alone would let anything through
    fake, project = env["fake"], env["project"]
    for tid in fake.projects[project]:
        text = fake.tasks[tid].data["text"]
        if text in POSITIVE or text in NEGATIVE:
            fake.create_annotation(tid, "positive" if text in POSITIVE else "negative", must_pass=text == POSITIVE[0])
    assert run(env).success
    candidate_with_flipped_labels(env)
    decided = run(env, [deployment]).output_for_node("deployment")
    assert decided["decision"] == "rejected" and "must-pass" in decided["reason"]
    assert DeploymentStore(env["settings"]).get("sentiment").canary_tag is None


def test_edits_change_and_deletions_leave_the_dataset(env) -> None:
    fake, project = env["fake"], env["project"]
    ids = annotate_all(fake, project)
    first = run(env, [annotations, dataset])
    data = first.output_for_node("dataset")
    assert data.height == 12
    assert data.filter(data["text"] == POSITIVE[0])["label"].to_list() == ["positive"]

    fake.update_annotation(ids[POSITIVE[0]], "negative")
    fake.delete_annotation(ids[NEGATIVE[0]])
    second = run(env, [annotations, dataset], raise_on_error=False)
    data = second.output_for_node("dataset")
    assert data.height == 11
    assert data.filter(data["text"] == POSITIVE[0])["label"].to_list() == ["negative"]
    assert NEGATIVE[0] not in data["text"].to_list()
    meta = second.asset_materializations_for_node("annotations")[0].metadata
    assert meta["tasks_changed"].value == 2  # incremental: only the edited and the deleted task were read


def test_a_label_outside_the_label_set_fails_a_blocking_check_and_stops_training(env) -> None:
    fake, project = env["fake"], env["project"]
    annotate_all(fake, project)
    fake.create_annotation(fake.projects[project][-1], "sarcastic")
    result = run(env, raise_on_error=False)
    assert not result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["labels_in_label_set"].passed
    assert checks["labels_in_label_set"].metadata["unexpected_labels"].value == ["sarcastic"]
    assert checks["enough_examples_per_label"].passed
    assert list_versions(env["settings"], "sentiment") == []


def test_too_few_examples_wait_for_more_without_failing_the_run(env) -> None:
    """A young function (one annotation): nothing is wrong, training waits; the run is green, the check warns
    and no version is made. Bad data (a label outside the set) still fails the run (test above)."""
    fake, project = env["fake"], env["project"]
    fake.create_annotation(fake.projects[project][0], "positive")
    result = run(env, raise_on_error=False)
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["enough_examples_per_label"].passed
    assert checks["enough_examples_per_label"].severity.value == "WARN"
    assert not result.asset_materializations_for_node("dataset")
    assert not result.asset_materializations_for_node("model")
    assert list_versions(env["settings"], "sentiment") == []


def sensor_tick(env, cursor: str | None = None):
    context = build_sensor_context(
        cursor=cursor, instance=env["instance"], resources={"loopml": env["resources"]["loopml"]}
    )
    return annotation_sensor(context), context


def skipped(result) -> str | None:
    """The skip message of a tick that requested nothing (a SkipReason, or a SensorResult that only moves the
    cursor), else None."""
    if isinstance(result, SkipReason):
        return result.skip_message
    if isinstance(result, SensorResult) and not result.run_requests:
        return result.skip_reason.skip_message if result.skip_reason else ""
    return None


@pytest.fixture
def polling(monkeypatch):
    """Every tick is a full poll of Label Studio (the fallback path, without webhook signals)."""
    monkeypatch.setenv("LOOPML_ANNOTATION_POLL_SECONDS", "0")


def test_annotation_sensor_requests_runs_only_on_change(env, polling) -> None:
    fake, project = env["fake"], env["project"]
    result, _ = sensor_tick(env)
    assert "no annotation changes" in skipped(result)

    fake.create_annotation(fake.projects[project][0], "positive")
    result, _ = sensor_tick(env)
    assert isinstance(result, SensorResult)
    assert [r.partition_key for r in result.run_requests] == ["sentiment"]
    cursor = result.cursor
    assert "sentiment" in json.loads(cursor)

    again, _ = sensor_tick(env, cursor)
    assert skipped(again) is not None

    deleted = fake.tasks[fake.projects[project][0]].annotations[0].annotation_id
    fake.delete_annotation(deleted)
    fake.create_annotation(fake.projects[project][1], "positive")
    fake.delete_annotation(fake.tasks[fake.projects[project][1]].annotations[0].annotation_id)
    after_delete, _ = sensor_tick(env, cursor)
    assert skipped(after_delete) is not None  # no annotated task left: nothing to train on
    fake.create_annotation(fake.projects[project][2], "negative")
    changed, _ = sensor_tick(env, cursor)
    assert isinstance(changed, SensorResult) and changed.run_requests and changed.cursor != cursor


def test_annotation_sensor_skips_when_label_studio_is_down_and_keeps_its_cursor(env, polling) -> None:
    fake, project = env["fake"], env["project"]
    fake.create_annotation(fake.projects[project][0], "positive")
    first, _ = sensor_tick(env)
    cursor = first.cursor
    fake.create_annotation(fake.projects[project][1], "positive")
    fake.down = True
    down, _ = sensor_tick(env, cursor)
    assert isinstance(down, SkipReason)
    assert "not reachable" in down.skip_message and "cursor did not advance" in down.skip_message
    fake.down = False
    back, _ = sensor_tick(env, cursor)
    assert isinstance(back, SensorResult) and back.run_requests[0].partition_key == "sentiment"


def test_a_webhook_signal_makes_the_sensor_look_at_once_and_polling_catches_the_rest(env, monkeypatch) -> None:
    """Between polls the sensor reads only the webhook signal files: a signalled function is asked about on the
    next tick; an unsignalled change waits for the next poll (LOOPML_ANNOTATION_POLL_SECONDS)."""
    from loopml.loop_signals import mark_annotations_changed

    monkeypatch.setenv("LOOPML_ANNOTATION_POLL_SECONDS", "3600")
    fake, project = env["fake"], env["project"]
    first, _ = sensor_tick(env)  # the first tick is a full poll
    cursor = first.cursor
    assert "no annotation changes" in skipped(first)

    fake.create_annotation(fake.projects[project][0], "positive")  # no webhook reached LoopML
    quiet, _ = sensor_tick(env, cursor)
    assert "no webhook signal" in skipped(quiet)
    fake.down = True  # between polls, without a signal, Label Studio is not even asked
    assert "no webhook signal" in skipped(sensor_tick(env, cursor)[0])
    fake.down = False

    mark_annotations_changed(env["settings"].run_dir, "sentiment")  # what the serving API's hook route does
    signalled, _ = sensor_tick(env, cursor)
    assert [r.partition_key for r in signalled.run_requests] == ["sentiment"]
    consumed, _ = sensor_tick(env, signalled.cursor)
    assert "no webhook signal" in skipped(consumed)

    monkeypatch.setenv("LOOPML_ANNOTATION_POLL_SECONDS", "0")  # the poll interval passed
    fake.create_annotation(fake.projects[project][1], "negative")
    polled, _ = sensor_tick(env, consumed.cursor if isinstance(consumed, SensorResult) else signalled.cursor)
    assert [r.partition_key for r in polled.run_requests] == ["sentiment"]

    from loopml.evolution import apply_label_set

    monkeypatch.setenv("LOOPML_ANNOTATION_POLL_SECONDS", "3600")
    quiet, _ = sensor_tick(env, polled.cursor)
    assert "no webhook signal" in skipped(quiet)
    apply_label_set(env["settings"], "sentiment", ["positive", "negative", "neutral"], source="cli")  # signals too
    relabelled, _ = sensor_tick(env, polled.cursor)
    assert [r.tags["loopml/trigger"] for r in relabelled.run_requests] == ["label-set"]


def test_discovery_sensor_adds_partitions_for_new_functions(env) -> None:
    FunctionRegistry(env["settings"]).add(FunctionSpec("topics", "text", ["a", "b"], "minilm-l6-int8", None))
    context = build_sensor_context(instance=env["instance"], resources={"loopml": env["resources"]["loopml"]})
    result = function_discovery_sensor(context)
    assert isinstance(result, SensorResult)
    assert result.dynamic_partitions_requests[0].partition_keys == ["topics"]


def test_definitions_load() -> None:
    from pipelines.definitions import defs

    job = defs.resolve_job_def("train_function")
    assert {n.name for n in job.graph.node_defs} >= {"annotations", "dataset", "features", "model"}
    assert {n.name for n in defs.resolve_job_def("deploy_function").graph.node_defs} == {"deployment"}
    from pipelines.sensors import SENSOR_TICK_SECONDS

    # the annotation sensor ticks on the webhook signals; its full poll of Label Studio is a setting
    assert defs.resolve_sensor_def("annotation_sensor").minimum_interval_seconds == SENSOR_TICK_SECONDS
    assert defs.resolve_schedule_def("nightly_retraining").cron_schedule == "0 3 * * *"
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys >= {"annotations", "dataset", "features", "model", "deployment", "preannotations", "label_issues"}


def test_a_new_version_waits_for_the_rollout_in_progress(env, monkeypatch) -> None:
    monkeypatch.setenv("LOOPML_GATE_TOLERANCE", "1.0")  # this test is about the rollout, not the gate
    fake, project = env["fake"], env["project"]
    annotate_all(fake, project)
    assert run(env).success  # v1: primary
    store = DeploymentStore(env["settings"])
    store.start_canary("sentiment", "sentiment:v0-canary", 0.1, "a rollout in progress")
    fake.create_annotation(fake.projects[project][-1], "positive")
    decided = run(env).output_for_node("deployment")  # v2 passes the gate and waits
    assert decided["decision"] == "waiting" and decided["canary"] == "sentiment:v0-canary"
    assert store.history("sentiment")[-1].reason.startswith("sentiment:v2 passed the gate")
    assert "waits for the rollout of canary sentiment:v0-canary" in store.history("sentiment")[-1].reason

    store.rollback("sentiment", "the canary controller ended the rollout")
    assert store.pending_handover("sentiment").waiting == ["sentiment:v2"]
    again = run(env, [deployment]).output_for_node("deployment")  # the deploy_function job
    assert again["decision"] == "canary" and store.get("sentiment").canary_tag == "sentiment:v2"


def test_a_rollout_that_cannot_decide_is_replaced_after_the_patience(env, monkeypatch) -> None:
    monkeypatch.setenv("LOOPML_GATE_TOLERANCE", "1.0")
    monkeypatch.setenv("LOOPML_ROLLOUT_PATIENCE_SECONDS", "0")
    fake, project = env["fake"], env["project"]
    annotate_all(fake, project)
    assert run(env).success
    store = DeploymentStore(env["settings"])
    store.start_canary("sentiment", "sentiment:v0-canary", 0.1, "a rollout with too little traffic")
    fake.create_annotation(fake.projects[project][-1], "positive")
    decided = run(env).output_for_node("deployment")
    assert decided["decision"] == "canary" and store.get("sentiment").canary_tag == "sentiment:v2"
    assert "replaces canary sentiment:v0-canary" in store.history("sentiment")[-1].reason


def test_a_retrain_with_nothing_new_is_held_and_new_examples_are_gated_on_fresh_items(env) -> None:
    """A second version trained on exactly the primary's examples is held (the primary keeps serving, no
    rollout); after more annotations the next version is gated on the holdout plus the items the primary never
    saw, scored by the candidate's out-of-fold answers."""
    fake, project = env["fake"], env["project"]
    annotate_all(fake, project)
    assert run(env).success  # v1: primary
    again = run(env, [model, deployment])  # v2 on the same examples
    decided = again.output_for_node("deployment")
    store = DeploymentStore(env["settings"])
    assert decided["decision"] == "held" and decided["candidate"] == "sentiment:v2"
    assert decided["reason"].startswith("trained on the primary's examples and not clearly better")
    assert store.get("sentiment").primary_tag == "sentiment:v1" and store.get("sentiment").canary_tag is None
    assert store.history("sentiment")[-1].action == "hold"
    assert again.get_asset_check_evaluations()[0].passed

    texts = [f"{text}, wrote reviewer {i}" for i, text in enumerate(POSITIVE + NEGATIVE)]
    fake.import_tasks(project, [{"data": {"text": t}} for t in texts])
    for tid in fake.projects[project][-len(texts) :]:
        text = fake.tasks[tid].data["text"]
        fake.create_annotation(tid, "positive" if text.split(", wrote")[0] in POSITIVE else "negative")
    newer = run(env)
    decided = newer.output_for_node("deployment")
    meta = newer.asset_materializations_for_node("deployment")[0].metadata
    in_train = newer.asset_materializations_for_node("dataset")[0].metadata
    assert decided["decision"] in ("canary", "rejected") and decided["candidate"] == "sentiment:v3"
    assert meta["fresh_items"].value > 0 and meta["evidence_items"].value == meta["fresh_items"].value + (
        in_train["holdout_rows"].value
    )
    # the gate's numbers, plottable: both versions' accuracy on that evidence, and how often they disagree
    for key in ("evidence_candidate_accuracy", "evidence_primary_accuracy", "holdout_disagreement"):
        assert 0.0 <= meta[key].value <= 1.0, key
    assert meta["compared_items"].value == in_train["holdout_rows"].value


def test_every_training_run_that_made_a_model_is_followed_by_an_inspection(env) -> None:
    """inspect_after_training: one label_issues run per training run of a function that made a model (keyed by
    run); a young function's green run that waited for more examples made none, and gets none."""
    from dagster import DagsterRun, RunRequest, build_run_status_sensor_context

    from pipelines.follow_ups import inspect_after_training

    fake, project = env["fake"], env["project"]
    fake.create_annotation(fake.projects[project][0], "positive")
    young = run(env)  # too few examples: green, no model
    annotate_all(fake, project)
    trained = run(env)
    instance = env["instance"]

    def after(result, run: DagsterRun | None = None):
        run = run or instance.get_run_by_id(result.run_id)
        event = next(e for e in result.all_events if e.event_type_value == "PIPELINE_SUCCESS")
        context = build_run_status_sensor_context(
            sensor_name="inspect_after_training", dagster_event=event, dagster_instance=instance, dagster_run=run
        )
        return inspect_after_training(context)

    requested = after(trained)
    assert isinstance(requested, RunRequest)
    assert (requested.partition_key, requested.run_key, requested.tags["loopml/trigger"]) == (
        "sentiment",
        f"inspect:{trained.run_id}",
        "trained",
    )
    assert "made no model" in after(young).skip_message
    without_partition = DagsterRun(job_name="train_function", run_id=trained.run_id)
    assert isinstance(after(trained, without_partition), SkipReason)

    from pipelines.definitions import defs

    sensor = defs.resolve_sensor_def("inspect_after_training")
    assert [t.job_name for t in sensor.targets] == ["inspect_function"]
    assert {n.name for n in defs.resolve_job_def("inspect_function").graph.node_defs} == {"label_issues"}


def test_a_deploy_run_gates_on_a_dataset_newer_than_its_features(env) -> None:
    """deploy_function reads the newest dataset and features; when the dataset is ahead (a training run
    between the two stages, or one stopped by a blocking check), the items without features are embedded
    from the cache instead of failing the run."""
    fake, project = env["fake"], env["project"]
    annotate_all(fake, project)
    assert run(env).success
    texts = [f"{text}, said critic number {i}" for i, text in enumerate(POSITIVE + NEGATIVE)]
    fake.import_tasks(project, [{"data": {"text": t}} for t in texts])
    for tid in fake.projects[project][-len(texts) :]:
        fake.create_annotation(tid, "positive" if "number" in fake.tasks[tid].data["text"] else "negative")
    assert run(env, [annotations, dataset]).success  # the features stay behind
    again = run(env, [deployment])
    assert again.success
    assert again.output_for_node("deployment")["decision"] == "unchanged"


def test_a_label_studio_outage_retries_the_step_instead_of_failing_the_run(env, monkeypatch) -> None:
    """Label Studio unreachable for a moment (restarting, timing out): the step that talks to it is retried with
    a wait, and the run succeeds; down for good, the run fails after the last retry with the reason."""
    from loopml.labelstudio import LabelStudioUnavailable

    fake, project = env["fake"], env["project"]
    annotate_all(fake, project)
    outages = iter(range(2))

    def flaky() -> None:
        if next(outages, None) is not None:
            raise LabelStudioUnavailable("Label Studio is not reachable at http://fake (timed out)")

    monkeypatch.setattr(fake, "_check", flaky)
    result = run(env, [annotations])
    assert result.success
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) == 2

    from assets.resources import LABELSTUDIO_RETRIES

    monkeypatch.delattr(fake, "_check")  # back to the class's check: down means unreachable
    fake.down = True
    failed = run(env, [annotations], raise_on_error=False)
    assert not failed.success
    retried = [e for e in failed.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) == LABELSTUDIO_RETRIES
    (failure,) = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "not reachable" in str(failure.event_specific_data.error)
    from assets.resources import FAILED_ON_TAG

    assert env["instance"].get_run_by_id(failed.run_id).tags[FAILED_ON_TAG] == "labelstudio"  # the sensor asks again


def test_a_young_function_whose_items_all_train_gets_its_first_version(env) -> None:
    """Three examples per label that all fall in the training split (no holdout yet): the first version is
    registered (its holdout accuracy is left out of the model store's metadata, which has no null)."""
    from loopml.dataset import content_hash, split_of

    fake, project = env["fake"], env["project"]
    texts = {
        label: [t for t in (f"{word} film number {i}" for i in range(200)) if split_of(content_hash(t)) == "train"][:3]
        for label, word in (("positive", "a lovely"), ("negative", "a dreadful"))
    }
    fake.import_tasks(project, [{"data": {"text": t}} for label in texts for t in texts[label]])
    for tid in fake.projects[project][-6:]:
        text = fake.tasks[tid].data["text"]
        fake.create_annotation(tid, "positive" if text in texts["positive"] else "negative")
    result = run(env)
    assert result.success and result.output_for_node("model")["holdout_rows"] == 0
    (version,) = list_versions(env["settings"], "sentiment")
    assert "holdout_accuracy" not in version.metadata and version.metadata["train_rows"] == 6


def test_a_young_function_short_in_the_training_split_waits_without_failing_the_run(env) -> None:
    """Three examples per label, but two of one label's fell in the holdout: cross-validation cannot train on
    one example, so training waits (green run, no version) instead of failing."""
    from loopml.dataset import content_hash, split_of

    def pick(word: str, split: str, count: int) -> list[str]:
        found = (f"{word} film number {i}" for i in range(500))
        return [t for t in found if split_of(content_hash(t)) == split][:count]

    positive = pick("a lovely", "train", 3)
    negative = pick("a dreadful", "train", 1) + pick("a dreadful", "holdout", 2)
    fake, project = env["fake"], env["project"]
    fake.import_tasks(project, [{"data": {"text": t}} for t in positive + negative])
    for tid in fake.projects[project][-6:]:
        fake.create_annotation(tid, "positive" if fake.tasks[tid].data["text"] in positive else "negative")
    result = run(env)
    assert result.success
    assert result.asset_materializations_for_node("dataset")  # enough examples in all: the dataset is valid
    assert not result.asset_materializations_for_node("model")
    assert list_versions(env["settings"], "sentiment") == []


def test_an_unchanged_project_costs_one_label_studio_call_per_poll() -> None:
    """The signature asks whether the project has annotations only when its fingerprint moved since the one
    acted on; a project without annotations has no signature."""
    from loopml.loop_signals import annotation_part, annotation_signature, training_signature

    class Source:
        def __init__(self, latest: str | None, count: int, annotated: bool) -> None:
            self.latest, self.count, self.annotated, self.calls = latest, count, annotated, []

        def task_fingerprint(self, project_id: int) -> tuple[str | None, int]:
            self.calls.append("fingerprint")
            return self.latest, self.count

        def has_annotations(self, project_id: int) -> bool:
            self.calls.append("has_annotations")
            return self.annotated

    fresh = Source("2026-12-04T10:00:00", 5, annotated=False)
    assert annotation_signature(fresh, 1) is None  # tasks, no annotations yet
    labelled = Source("2026-12-04T10:00:01", 5, annotated=True)
    signature = annotation_signature(labelled, 1)
    assert signature == "2026-12-04T10:00:01|5"
    acted_on = training_signature(signature, ["a", "b"])
    labelled.calls.clear()
    assert annotation_signature(labelled, 1, previous=annotation_part(acted_on)) == signature
    assert labelled.calls == ["fingerprint"]  # unchanged: one call
    labelled.latest, labelled.annotated = "2026-12-04T10:00:02", False  # the last annotation was deleted
    labelled.calls.clear()
    assert annotation_signature(labelled, 1, previous=annotation_part(acted_on)) is None
    assert labelled.calls == ["fingerprint", "has_annotations"]
    assert annotation_part(None) is None


def test_an_image_function_trains_and_deploys(tmp_path, monkeypatch) -> None:
    """Images through the same assets: the dataset hashes their bytes and checks they decode, features are
    EfficientNet-Lite0 embeddings, AutoML fits embedding heads only, the version deploys and classifies images."""
    import base64

    from loopml.encoders import get_encoder
    from loopml.functions import render_label_config
    from tests.serving_support import IMAGE_ENCODER, png

    uri = lambda data: "data:image/png;base64," + base64.b64encode(data).decode()  # noqa: E731
    light = [png(250 - 4 * i, seed=i) for i in range(8)]
    dark = [png(5 + 4 * i, seed=50 + i) for i in range(8)]
    spec = FunctionSpec("tone", "image", ["light", "dark"], IMAGE_ENCODER)
    tasks = [{"data": {"image": uri(d)}} for d in light + dark + [png(128, seed=99)]]
    config = render_label_config("image", ["light", "dark"])
    with fake_function(tmp_path, monkeypatch, spec, tasks, config) as made:
        settings, fake, project = made["settings"], made["fake"], made["project"]
        instance, resources = made["instance"], made["resources"]
        for tid in fake.projects[project][:16]:
            fake.create_annotation(tid, "light" if tid < fake.projects[project][8] else "dark", to_name="image")
        result = materialize(ASSETS, instance=instance, partition_key="tone", resources=resources)
        assert result.success
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks["inputs_not_empty"] and checks["labels_in_label_set"]
        assert result.asset_materializations_for_node("features")[0].metadata["encoder"].value == IMAGE_ENCODER
        output = result.output_for_node("model")
        assert output["tag"] == "tone:v1" and output["label_set"] == ["light", "dark"]
        assert "tfidf" not in output["winner"]
        assert result.output_for_node("deployment")["decision"] == "primary"
        classifier = load_classifier(settings, "tone:v1")
        images = [png(240, seed=7), png(15, seed=8)]
        probs = classifier.predict_proba(["a", "b"], get_encoder(IMAGE_ENCODER).encode(images))
        assert probs[0].argmax() == 0 and probs[1].argmax() == 1

        # inspection and monitoring run on an image function too (no calls logged yet: a report says so); a
        # clearly light image labelled dark comes back to Label Studio as a label issue on the Image object
        from assets.inspection import ISSUE_MODEL_VERSION, label_issues
        from assets.monitoring import drift_report

        wrong = fake.import_tasks(project, [{"data": {"image": uri(png(252, seed=77))}}])
        assert wrong == 1
        fake.create_annotation(fake.projects[project][-1], "dark", to_name="image")
        assert materialize(ASSETS, instance=instance, partition_key="tone", resources=resources).success

        import functools

        import loopml.label_issues

        found = functools.partial(loopml.label_issues.find_label_issues, disagreement_confidence=0.5)
        monkeypatch.setattr(loopml.label_issues, "find_label_issues", found)  # 18 items: flag plain disagreement
        # three calls as the serving API logs them: a thumbnail that keeps its grey 300x200 original's figures
        from loopml.images import decode_image, thumbnail_uri
        from loopml.invocation_log import InvocationLog, InvocationRecord, embedding_to_bytes

        calls = [png(30 * i, size=(300, 200), seed=i, mode="L") for i in range(3)]
        log = InvocationLog(settings)
        log.log_many(
            [
                InvocationRecord(
                    function="tone",
                    input_text=thumbnail_uri(decode_image(call)),
                    embedding=embedding_to_bytes(vector),
                    scores={"tone:v1": [0.2, 0.8]},
                    labels={"tone:v1": ["light", "dark"]},
                    answered_by="tone:v1",
                    label="dark",
                    confidence=0.8,
                    latency_ms=5.0,
                )
                for call, vector in zip(calls, get_encoder(IMAGE_ENCODER).encode(calls), strict=True)
            ]
        )
        log.close()
        metadata = {}
        for asset in (label_issues, drift_report):
            later = materialize(
                [asset, *[a.to_source_asset() for a in ASSETS]],
                instance=instance,
                partition_key="tone",
                resources=resources,
            )
            assert later.success, asset.key
            metadata = later.asset_materializations_for_node(asset.key.path[-1])[0].metadata
        # the drift report of an image function follows image properties, not text lengths
        assert metadata["input_type"].value == "image" and "current_text_length_mean" not in metadata
        assert metadata["current_width_mean"].value == 300.0 and metadata["current_channels_mean"].value == 1.0
        assert metadata["reference_width_mean"].value == 40.0 and metadata["reference_channels_mean"].value == 3.0
        assert metadata["current_brightness_mean"].value < 60 < metadata["reference_brightness_mean"].value
        issues = [p for ps in fake.predictions.values() for p in ps if p.model_version == ISSUE_MODEL_VERSION]
        assert issues and {p.to_name for p in issues} == {"image"}
        assert fake.projects[project][-1] in {p.task_id for p in issues}


def test_a_stored_table_reads_whole_while_another_run_replaces_it(tmp_path) -> None:
    """An inspection run read the dataset while a training run replaced it: polars, reading by path, opened the
    file twice and failed ("page header reported the wrong page size", or a panic). The IO manager reads the
    file's bytes in one go, so each read gets one whole version, however often it is replaced meanwhile."""
    import threading
    import time

    import numpy as np
    import polars as pl
    from dagster import build_input_context, build_output_context

    manager = LoopMLIOManager(home=str(tmp_path))
    versions = [pl.DataFrame({"x": np.arange(n), "s": [str(i) for i in range(n)]}) for n in (20_000, 30_000)]
    manager.handle_output(build_output_context(asset_key="dataset", partition_key="fn"), versions[0])
    stop = threading.Event()

    from assets.io_manager import asset_path

    path = asset_path(tmp_path / "data", "dataset", "fn", ".parquet")

    def writer() -> None:  # as handle_output does in the training run's process: a new file renamed over the old
        i = 0
        while not stop.is_set():
            versions[i % 2].write_parquet(path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    heights, failures = set(), []
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                heights.add(manager.load_input(build_input_context(asset_key="dataset", partition_key="fn")).height)
            except BaseException as error:  # noqa: BLE001 - polars panics are BaseExceptions
                failures.append(repr(error)[:200])
    finally:
        stop.set()
        thread.join()
    assert not failures, failures[:3]
    assert heights == {20_000, 30_000}  # both versions were read, each whole


def test_training_that_gave_up_on_label_studio_is_asked_for_again_once_it_is_back(env, polling) -> None:
    """A run whose step gave up on an unreachable Label Studio (tagged by the retry wrapper) does not lose the
    annotations it was to train on: once Label Studio answers, the sensor requests that training again, once per
    failed run; a run that failed on something else is not repeated."""
    from dagster import DagsterRun, DagsterRunStatus
    from dagster._core.utils import make_new_run_id

    from assets.resources import FAILED_ON_TAG

    fake, project = env["fake"], env["project"]
    fake.create_annotation(fake.projects[project][0], "positive")
    first, _ = sensor_tick(env)
    (request,) = first.run_requests
    signature = request.tags["loopml/signature"]

    def failed_run(tags: dict[str, str]) -> str:
        run_id = make_new_run_id()
        env["instance"].add_run(
            DagsterRun(
                job_name="train_function",
                run_id=run_id,
                status=DagsterRunStatus.FAILURE,
                tags={"dagster/partition": "sentiment", "loopml/signature": signature, **tags},
            )
        )
        return run_id

    failed_run({})  # failed on the data, say: not repeated
    assert skipped(sensor_tick(env, first.cursor)[0]) is not None
    gave_up = failed_run({FAILED_ON_TAG: "labelstudio"})
    fake.down = True
    assert isinstance(sensor_tick(env, first.cursor)[0], SkipReason)  # still down: nothing yet
    fake.down = False
    again, _ = sensor_tick(env, first.cursor)
    (retry,) = again.run_requests
    assert retry.partition_key == "sentiment" and retry.run_key.endswith(f"after-{gave_up[:8]}")
    assert retry.tags["loopml/trigger"] == "labelstudio-back"
