"""Model evolution (labels added and removed on a live function), label issues and pre-annotations, in-process
with Label Studio replaced by the in-memory fake."""

from __future__ import annotations

from dagster import SensorResult, SkipReason, build_sensor_context, materialize

from assets.inspection import ISSUE_MODEL_VERSION, label_issues
from assets.preannotations import preannotations
from loopml.dataset import content_hash, split_of
from loopml.deployments import DeploymentStore
from loopml.functions import FunctionRegistry, render_label_config
from loopml.labelstudio import PREFILLED_META, choice_result
from pipelines.follow_ups import preannotation_sensor
from pipelines.sensors import function_discovery_sensor
from tests.test_pipeline import (  # noqa: F401 - env is a fixture
    ASSETS,
    NEGATIVE,
    POSITIVE,
    annotate_all,
    env,
    run,
    sensor_tick,
)

NEUTRAL = [
    "the film opens on friday in most cities",
    "it runs for about two hours",
    "the director also wrote the screenplay",
    "the movie is based on a novel",
    "it was shot in three countries",
    "the cast includes several newcomers",
]


def _materialize(env, asset):
    return materialize(
        [asset, *[a.to_source_asset() for a in ASSETS]],
        instance=env["instance"],
        partition_key="sentiment",
        resources=env["resources"],
    )


def _discovery_tick(env):
    context = build_sensor_context(instance=env["instance"], resources={"loopml": env["resources"]["loopml"]})
    return function_discovery_sensor(context)


def _edit_labels_in_labelstudio(env, labels: list[str]) -> None:
    env["fake"].label_configs[env["project"]] = render_label_config("text", labels)


def test_preannotations_carry_the_primary_and_follow_promotions(env) -> None:
    fake, project = env["fake"], env["project"]
    annotate_all(fake, project)
    assert run(env).success
    unlabelled = [t for t in fake.projects[project] if not fake.tasks[t].annotations]

    def tick():
        context = build_sensor_context(instance=env["instance"], resources={"loopml": env["resources"]["loopml"]})
        return preannotation_sensor(context)

    first = tick()  # a primary and no pre-annotation yet
    assert isinstance(first, SensorResult) and first.run_requests[0].partition_key == "sentiment"
    assert first.run_requests[0].tags["loopml/primary"] == "sentiment:v1"

    result = _materialize(env, preannotations)
    meta = result.asset_materializations_for_node("preannotations")[0].metadata
    assert meta["predictions"].value == len(unlabelled) == 1
    (prediction,) = fake.predictions[unlabelled[0]]
    assert prediction.model_version == "sentiment:v1"
    assert prediction.label in ("positive", "negative") and 0.5 <= prediction.score <= 1.0
    assert fake.model_versions[project] == "sentiment:v1"  # the labelling UI shows this version's answers
    assert fake.sampling[project] == "Uncertainty sampling"  # and queues the tasks it is least sure of first

    assert isinstance(tick(), SkipReason)  # current
    DeploymentStore(env["settings"]).set_primary("sentiment", "sentiment:v9", "promoted by hand")
    promoted = tick()
    assert isinstance(promoted, SensorResult) and promoted.run_requests[0].tags["loopml/primary"] == "sentiment:v9"

    fake.down = True  # Label Studio down: the run fails, nothing is marked done, the sensor asks again later
    failed = materialize(
        [preannotations, *[a.to_source_asset() for a in ASSETS]],
        instance=env["instance"],
        partition_key="sentiment",
        resources=env["resources"],
        raise_on_error=False,
    )
    assert not failed.success
    assert isinstance(tick(), SensorResult)


def test_label_issues_rank_a_planted_error_first_and_send_it_back(env) -> None:
    fake, project = env["fake"], env["project"]
    good = ["wonderful", "brilliant", "delightful", "superb", "moving", "charming", "excellent", "lovely"]
    bad = ["dreadful", "boring", "awful", "tedious", "terrible", "dull", "clumsy", "painful"]
    things = ["film", "story", "script", "cast"]
    texts = {f"a {w} {t}, I enjoyed it": "positive" for w in good for t in things}
    texts |= {f"a {w} {t}, I regret watching": "negative" for w in bad for t in things}
    wrong = "a wonderful film, I enjoyed it"
    assert split_of(content_hash(wrong)) == "train"
    held_out = next(t for t in texts if texts[t] == "negative" and split_of(content_hash(t)) == "holdout")
    fake.import_tasks(project, [{"data": {"text": t}} for t in texts])
    for tid in fake.projects[project]:
        text = fake.tasks[tid].data["text"]
        if text in texts:
            flipped = {"positive": "negative", "negative": "positive"}[texts[text]]
            fake.create_annotation(tid, flipped if text in (wrong, held_out) else texts[text])
    assert run(env).success
    result = _materialize(env, label_issues)
    issues = result.output_for_node("label_issues")
    assert issues.height >= 1
    # the two planted errors rank first: one among the training items (out-of-fold probabilities), one among
    # the holdout items (scored by the model, never trained on)
    top = {r["text"]: (r["given_label"], r["suggested_label"]) for r in issues.head(2).to_dicts()}
    assert top == {wrong: ("negative", "positive"), held_out: ("positive", "negative")}
    task = next(t for t in fake.projects[project] if fake.tasks[t].data["text"] == wrong)
    assert [(p.label, p.model_version) for p in fake.predictions[task]] == [("positive", ISSUE_MODEL_VERSION)]
    meta = result.asset_materializations_for_node("label_issues")[0].metadata
    assert meta["sent_to_labelstudio"].value >= 2 and "top_issues" in meta and meta["holdout_items"].value >= 1

    again = _materialize(env, label_issues)  # the same suggestions are not sent twice
    assert again.asset_materializations_for_node("label_issues")[0].metadata["sent_to_labelstudio"].value == 0


def test_a_label_added_in_labelstudio_enters_training_once_it_has_enough_examples(env) -> None:
    fake, project = env["fake"], env["project"]
    annotate_all(fake, project)
    assert run(env).output_for_node("model")["label_set"] == ["positive", "negative"]

    before, _ = sensor_tick(env)
    assert isinstance(before, SensorResult)
    _edit_labels_in_labelstudio(env, ["positive", "negative", "neutral"])
    tick = _discovery_tick(env)
    assert isinstance(tick, SkipReason) and "sentiment: added ['neutral']" in tick.skip_message
    assert FunctionRegistry(env["settings"]).get("sentiment").labels == ["positive", "negative", "neutral"]
    assert "no label set changes" in _discovery_tick(env).skip_message  # adopted once
    retrain, _ = sensor_tick(env, before.cursor)  # the annotation sensor requests the retraining run
    assert isinstance(retrain, SensorResult) and [r.partition_key for r in retrain.run_requests] == ["sentiment"]
    assert retrain.run_requests[0].tags["loopml/trigger"] == "label-set"

    fake.import_tasks(project, [{"data": {"text": t}} for t in NEUTRAL])
    neutral_tasks = [t for t in fake.projects[project] if fake.tasks[t].data["text"] in NEUTRAL]
    fake.create_annotation(neutral_tasks[0], "neutral")  # one example: not enough yet
    few = run(env)
    assert few.success  # a short new label does not block training ...
    assert few.output_for_node("model")["labels_left_out"] == ["neutral"]  # ... it is left out
    checks = {c.check_name: c for c in few.get_asset_check_evaluations()}
    assert not checks["enough_examples_per_label"].passed
    assert checks["enough_examples_per_label"].severity.value == "WARN"
    # the version without the short label learnt nothing the primary had not: held, no rollout
    assert few.output_for_node("deployment")["decision"] == "held"

    for tid in neutral_tasks[1:]:
        fake.create_annotation(tid, "neutral")
    enough = run(env)
    assert enough.output_for_node("model")["label_set"] == ["positive", "negative", "neutral"]

    # the version with the new label rolls out (the gate compared it on the labels both versions know) and serves
    from serving.runtime import ModelRuntime

    decided = enough.output_for_node("deployment")
    assert decided["decision"] == "canary" and decided["candidate"] == enough.output_for_node("model")["tag"]
    DeploymentStore(env["settings"]).promote("sentiment", "the canary controller found it healthy")
    runtime = ModelRuntime(env["settings"], lanes=1, warm_encoders=False)
    runtime.start(wait=True, timeout=60)
    try:
        (answer,) = runtime.predict("sentiment", [NEUTRAL[1]])
        assert answer.label == "neutral" and answer.answered_by == decided["candidate"] and answer.role == "primary"
    finally:
        runtime.stop()


def test_a_removed_label_is_excluded_with_a_warning(env) -> None:
    fake, project = env["fake"], env["project"]
    _edit_labels_in_labelstudio(env, ["positive", "negative", "neutral"])
    _discovery_tick(env)
    annotate_all(fake, project)
    fake.import_tasks(project, [{"data": {"text": t}} for t in NEUTRAL])
    for tid in fake.projects[project]:
        if fake.tasks[tid].data["text"] in NEUTRAL:
            fake.create_annotation(tid, "neutral")
    assert "neutral" in run(env).output_for_node("model")["label_set"]
    trained, _ = sensor_tick(env)

    _edit_labels_in_labelstudio(env, ["positive", "negative"])
    assert "removed ['neutral']" in _discovery_tick(env).skip_message
    retrain, _ = sensor_tick(env, trained.cursor)
    assert isinstance(retrain, SensorResult) and retrain.run_requests[0].tags["loopml/trigger"] == "label-set"
    result = run(env)
    assert result.success
    assert result.output_for_node("model")["label_set"] == ["positive", "negative"]
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["removed_labels_excluded"].passed
    assert checks["removed_labels_excluded"].severity.value == "WARN"
    assert checks["labels_in_label_set"].passed  # removed, not unknown
    dataset_meta = result.asset_materializations_for_node("dataset")[0].metadata
    assert dataset_meta["excluded_removed_labels"].value == {"neutral": len(NEUTRAL)}


def test_the_next_model_trains_in_the_directions_of_the_unlabelled_tasks(env) -> None:
    fake, project = env["fake"], env["project"]
    fake.import_tasks(project, [{"data": {"text": f"{NEUTRAL[i % 6]}, scene {i}"}} for i in range(300)])
    annotate_all(fake, project)
    first = run(env)
    assert first.output_for_node("model")["unlabelled_items"] == 0  # nothing pre-annotated yet
    assert first.output_for_node("model")["feature_dims"] == 384  # all of MiniLM's dimensions

    _materialize(env, preannotations)  # embeds and records the 301 unlabelled tasks
    fake.create_annotation(fake.projects[project][0], "positive")  # an edit: the sensor would retrain
    again = run(env)
    second = again.output_for_node("model")
    assert second["unlabelled_items"] == 301
    assert second["feature_dims"] == 16  # a dozen labelled rows: the 16 leading directions
    meta = again.asset_materializations_for_node("model")[0].metadata
    assert meta["feature_basis"].value == f"16 principal directions of {second['train_rows'] + 301} items"


def test_preannotations_go_chunk_by_chunk_and_record_the_tasks_as_they_go(env, monkeypatch) -> None:
    import polars as pl

    import assets.preannotations as preannotations_module

    fake, project = env["fake"], env["project"]
    fake.import_tasks(project, [{"data": {"text": text}} for text in NEUTRAL[:4]])  # 5 unlabelled tasks in all
    annotate_all(fake, project)
    assert run(env).success
    monkeypatch.setattr(preannotations_module, "CHUNK_TASKS", 2)
    imports: list[int] = []
    records: list[int] = []
    original_import, original_write = fake.import_predictions, preannotations_module.write_unlabelled_items

    def counting_import(project_id, predictions):  # noqa: ANN001, ANN202
        imports.append(len(predictions))
        return original_import(project_id, predictions)

    def counting_write(path, hashes):  # noqa: ANN001, ANN202
        records.append(len(hashes))
        original_write(path, hashes)

    monkeypatch.setattr(fake, "import_predictions", counting_import)
    monkeypatch.setattr(preannotations_module, "write_unlabelled_items", counting_write)
    meta = _materialize(env, preannotations).asset_materializations_for_node("preannotations")[0].metadata
    assert meta["predictions"].value == 5 and imports == [2, 2, 1]
    assert records == [2, 4, 5]  # the record grows with each chunk
    path = preannotations_module.unlabelled_items_path(env["settings"].data_dir, "sentiment")
    assert pl.read_parquet(path).height == 5
    assert fake.model_versions[project] == "sentiment:v1"

    records.clear()  # a later run (a new primary) keeps what is still unlabelled recorded while it catches up
    fake.create_annotation(fake.projects[project][-1], "positive")  # one task labelled meanwhile
    assert run(env).success
    DeploymentStore(env["settings"]).set_primary("sentiment", "sentiment:v2", "promoted by hand")
    _materialize(env, preannotations)
    assert records == [4]  # the 4 still unlabelled, re-scored from cached embeddings in one chunk


def test_tasks_added_later_get_the_primarys_answer_and_only_they(env) -> None:
    """New tasks (imported, or calls sent for review that the canary answered) are pre-annotated without a
    promotion; tasks that already carry the primary's answer are not pre-annotated twice."""
    fake, project = env["fake"], env["project"]
    annotate_all(fake, project)
    assert run(env).success

    def tick():
        context = build_sensor_context(instance=env["instance"], resources={"loopml": env["resources"]["loopml"]})
        return preannotation_sensor(context)

    assert tick().run_requests[0].tags["loopml/trigger"] == "new-primary"
    assert _materialize(env, preannotations).success
    assert isinstance(tick(), SkipReason)  # current: nothing added since
    before = {t: len(p) for t, p in fake.predictions.items()}

    fake.import_tasks(project, [{"data": {"text": t}} for t in NEUTRAL[:3]])  # imported by a user
    review = {"loopml_source": "review", PREFILLED_META: "sentiment:v1"}
    fake.import_tasks(  # a call the primary answered, sent for review with its answer
        project,
        [{"data": {"text": NEUTRAL[3]}, "meta": review, "predictions": [_prediction("sentiment:v1")]}],
    )
    canary_review = {"loopml_source": "review", PREFILLED_META: "sentiment:v7"}
    fake.import_tasks(  # a call a canary answered (no answer of the primary logged)
        project,
        [{"data": {"text": NEUTRAL[4]}, "meta": canary_review, "predictions": [_prediction("sentiment:v7")]}],
    )
    requested = tick()
    assert isinstance(requested, SensorResult) and requested.run_requests[0].tags["loopml/trigger"] == "new-tasks"
    meta = _materialize(env, preannotations).asset_materializations_for_node("preannotations")[0].metadata
    assert meta["predictions"].value == 4 and meta["already_preannotated"].value == 2
    new_tasks = {t for t in fake.projects[project] if fake.tasks[t].data["text"] in NEUTRAL[:5]}
    by_text = {fake.tasks[t].data["text"]: [p.model_version for p in fake.predictions[t]] for t in new_tasks}
    assert all(by_text[text] == ["sentiment:v1"] for text in NEUTRAL[:3])
    assert by_text[NEUTRAL[3]] == ["sentiment:v1"]  # not twice
    assert by_text[NEUTRAL[4]] == ["sentiment:v7", "sentiment:v1"]  # the labelling UI shows v1's answer
    assert all(len(fake.predictions[t]) == n for t, n in before.items())  # earlier tasks untouched
    assert isinstance(tick(), SkipReason)


def _prediction(version: str) -> dict:
    return {"model_version": version, "score": 0.6, "result": choice_result("positive")}
