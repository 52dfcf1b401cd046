"""Five loop features against a real Label Studio server, in-process Dagster on the real resources: must-pass
examples ticked in the labelling UI, label issues sent back, label-config edits made in the project's settings,
chunked pre-annotation, and the review that follows detected drift. The other tests of these features replace
Label Studio with the in-memory fake (tests/fakes.py).

Each test has its own LOOPML_HOME (registry, model store, invocation log, Dagster instance) with the session
server's credentials, and its own project on that one server. What the labelling UI does is done through the
HTTP API the UI calls, with the payloads it sends."""

from __future__ import annotations

import json
import shutil
import uuid

import httpx
import pytest
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context

import assets.preannotations as preannotations_module
from assets.deployment import deployment
from assets.inspection import ISSUE_MODEL_VERSION, label_issues
from assets.io_manager import LoopMLIOManager
from assets.monitoring import drift_report
from assets.preannotations import preannotations
from assets.resources import LoopMLResource
from assets.review import BUDGET_TAG
from loopml.config import get_settings
from loopml.deployments import DeploymentStore
from loopml.functions import FunctionRegistry, create_function, labels_from_label_config
from loopml.items import add_items
from loopml.labelstudio import extract_label
from loopml.labelstudio_server import credentials_path
from pipelines.definitions import defs
from pipelines.drift import drift_sensor
from pipelines.sensors import function_discovery_sensor
from tests.test_evolution_inspection import NEUTRAL
from tests.test_monitoring_assets import BAD, GOOD, SHIFTED, SIMILAR, TRAINING, _log_calls, _materialize
from tests.test_pipeline import NEGATIVE, POSITIVE, candidate_with_flipped_labels, run, sensor_tick

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(autouse=True)
def polling(monkeypatch):
    """Each annotation sensor tick polls Label Studio (no serving API receives the webhook here)."""
    monkeypatch.setenv("LOOPML_ANNOTATION_POLL_SECONDS", "0")


def real_function(labelstudio, tmp_path, monkeypatch, name: str, labels: str = "positive,negative") -> dict:
    """A fresh LOOPML_HOME that reaches the session's Label Studio, function ``name`` created there as `loopml
    functions create` does, an ephemeral Dagster instance with its partition and the real resources: the
    ``env`` dict of tests/test_pipeline.py, with ``client`` (the Label Studio client) instead of ``fake``."""
    monkeypatch.setenv("LOOPML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "home" / "bentoml"))
    monkeypatch.delenv("LOOPML_DATABASE_URL", raising=False)
    settings = get_settings()
    settings.ensure_dirs()
    shutil.copy(credentials_path(labelstudio.settings), credentials_path(settings))
    project = create_function(settings, name, "text", labels)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("functions", [name])
    return {
        "settings": settings,
        "client": labelstudio.client,
        "project": project,
        "instance": instance,
        "resources": {"loopml": LoopMLResource(), "loopml_io": LoopMLIOManager()},
        "function": name,
        "server": labelstudio,
    }


def ui_call(env, method: str, path: str, body: dict | None = None) -> httpx.Response:
    """A call of Label Studio's REST API as the logged-in user makes it from the UI."""
    server = env["server"]
    headers = {"Authorization": f"Token {server.api_key}"}
    return httpx.request(method, f"{server.url}{path}", json=body, headers=headers, timeout=30)


def add_labelled(env, tmp_path, items: dict[str, str | None]) -> None:
    """Import ``{text: label or None}`` as `loopml items add` does (labelled items become annotations)."""
    path = tmp_path / f"items-{uuid.uuid4().hex[:8]}.jsonl"
    rows = [{"text": text, **({"label": label} if label else {})} for text, label in items.items()]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    added = add_items(env["settings"], env["client"], env["function"], [path])
    assert (added.imported, added.labelled) == (len(items), sum(label is not None for label in items.values()))


def task_ids(env) -> dict[str, int]:
    """``{text: task id}`` of every task of the function's project."""
    return {text: task_id for task_id, text in env["client"].task_texts(env["project"]).items()}


def ui_result(label: str, *, must_pass: bool = False) -> list[dict]:
    """An annotation's result as the labelling UI stores it: one region per control, each with the UI's id."""
    ticks = [("label", label)] + ([("must_pass", "must pass")] if must_pass else [])
    return [
        {
            "value": {"choices": [choice]},
            "id": uuid.uuid4().hex[:10],
            "from_name": control,
            "to_name": "text",
            "type": "choices",
            "origin": "manual",
        }
        for control, choice in ticks
    ]


def submit_in_the_ui(env, task_id: int, label: str, *, must_pass: bool = False) -> int:
    """The annotator picks ``label`` (and ticks *must pass*) and presses Submit; the new annotation's id."""
    body = {
        "result": ui_result(label, must_pass=must_pass),
        "lead_time": 4.2,
        "draft_id": 0,
        "parent_prediction": None,
        "parent_annotation": None,
        "project": str(env["project"]),
    }
    answer = ui_call(env, "POST", f"/api/tasks/{task_id}/annotations?project={env['project']}", body)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def update_in_the_ui(env, annotation_id: int, task_id: int, label: str, *, must_pass: bool) -> None:
    """The annotator opens an annotation, changes its ticks and presses Update."""
    body = {"result": ui_result(label, must_pass=must_pass), "lead_time": 2.5, "project": str(env["project"])}
    path = f"/api/annotations/{annotation_id}?taskID={task_id}&project={env['project']}"
    answer = ui_call(env, "PATCH", path, body)
    assert answer.status_code == 200, answer.text


def shown_in_the_ui(env, task_id: int) -> list[tuple[str, str | None, float | None]]:
    """``(model version, label, score)`` of the predictions the labelling UI gets when it opens the task (those
    of the project's model version, which it pre-fills)."""
    answer = ui_call(env, "GET", f"/api/tasks/{task_id}?project={env['project']}")
    assert answer.status_code == 200, answer.text
    return [(p["model_version"], extract_label(p["result"]), p["score"]) for p in answer.json()["predictions"]]


def test_must_pass_examples_ticked_in_label_studio_block_a_version_that_gets_them_wrong(
    labelstudio, tmp_path, monkeypatch
) -> None:
    """One example ticked *must pass* on submit, another ticked later on its annotation: both reach the dataset,
    the gate counts them on every version, and a version that answers them wrong is not rolled out."""
    monkeypatch.setenv("LOOPML_GATE_TOLERANCE", "1.0")  # accuracy alone would let anything through
    env = real_function(labelstudio, tmp_path, monkeypatch, "ls-must-pass")
    ticked, later = POSITIVE[0], NEGATIVE[0]
    labelled = {text: "positive" for text in POSITIVE[1:]} | {text: "negative" for text in NEGATIVE[1:]}
    add_labelled(env, tmp_path, labelled | {ticked: None, later: None})
    tasks = task_ids(env)
    submit_in_the_ui(env, tasks[ticked], "positive", must_pass=True)
    annotation = submit_in_the_ui(env, tasks[later], "negative")

    def must_pass(result) -> set[str]:
        data = result.output_for_node("dataset")
        return set(data.filter(data["must_pass"])["text"].to_list())

    def gate(result) -> tuple[str, str]:
        meta = result.asset_materializations_for_node("deployment")[0].metadata
        return meta["decision"].value, meta["must_pass"].value

    first = run(env)
    assert must_pass(first) == {ticked}
    assert gate(first) == ("primary", "1/1 pass")

    update_in_the_ui(env, annotation, tasks[later], "negative", must_pass=True)
    second = run(env)
    assert second.asset_materializations_for_node("annotations")[0].metadata["tasks_changed"].value == 1
    assert must_pass(second) == {ticked, later}
    assert gate(second) == ("held", "2/2 pass")  # the same examples: nothing new to roll out

    bad = candidate_with_flipped_labels(env)
    gated = run(env, [deployment])
    decided = gated.output_for_node("deployment")
    assert (decided["decision"], decided["candidate"]) == ("rejected", bad)
    assert decided["reason"] == "2 of 2 must-pass examples answered wrong"
    check = gated.get_asset_check_evaluations()[0]
    assert check.check_name == "gate" and not check.passed
    assert {f["text"]: f["got"] for f in check.metadata["must_pass_failures"].value} == {
        ticked: "negative",
        later: "positive",
    }
    state = DeploymentStore(env["settings"]).get("ls-must-pass")
    assert (state.primary_tag, state.canary_tag) == ("ls-must-pass:v1", None)


def test_planted_label_errors_come_back_to_label_studio_with_the_models_suggestion(
    labelstudio, tmp_path, monkeypatch
) -> None:
    """Two wrong annotations among clearly separable ones (one in the training split, one in the holdout): after
    training and inspection, their tasks in Label Studio carry a `label-issue` prediction with the right label,
    which the Data Manager's model-version filter finds; a second inspection adds none."""
    from loopml.dataset import content_hash, split_of

    env = real_function(labelstudio, tmp_path, monkeypatch, "ls-label-issues")
    things = ["film", "story", "script", "cast"]
    truth = {f"a {w} {t}, I enjoyed it": "positive" for w in GOOD for t in things}
    truth |= {f"a {w} {t}, I regret watching": "negative" for w in BAD for t in things}
    trained = "a wonderful film, I enjoyed it"
    assert split_of(content_hash(trained)) == "train"
    held_out = next(t for t in truth if truth[t] == "negative" and split_of(content_hash(t)) == "holdout")
    flip = {"positive": "negative", "negative": "positive"}
    add_labelled(env, tmp_path, {t: flip[label] if t in (trained, held_out) else label for t, label in truth.items()})
    assert run(env).success

    inspected = _materialize(env, label_issues)
    meta = inspected.asset_materializations_for_node("label_issues")[0].metadata
    issues = inspected.output_for_node("label_issues")
    sent = issues.filter(issues["task_id"].is_not_null()).head(meta["sent_to_labelstudio"].value)
    assert meta["sent_to_labelstudio"].value >= 2
    tasks = task_ids(env)
    client = env["client"]
    for text in (trained, held_out):
        (prediction,) = client.task_predictions(tasks[text])
        assert (prediction["model_version"], prediction["label"]) == (ISSUE_MODEL_VERSION, truth[text])
    flagged = client.prediction_keys(env["project"], set(tasks.values()), {ISSUE_MODEL_VERSION})
    assert {task for task, _, _ in flagged} == set(sent["task_id"].to_list())

    again = _materialize(env, label_issues)
    assert again.asset_materializations_for_node("label_issues")[0].metadata["sent_to_labelstudio"].value == 0
    assert client.prediction_keys(env["project"], set(tasks.values()), {ISSUE_MODEL_VERSION}) == flagged
    assert len(client.task_predictions(tasks[trained])) == 1


def _edited_label_config(env, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()) -> str:
    """The project's label config with choices added to (or removed from) the `label` control, as the
    labelling interface settings write them."""
    config = env["client"].get_label_config(env["project"])
    head, end, tail = config.partition("</Choices>")  # the `label` control is the first in LoopML's templates
    assert 'name="label"' in head
    for label in remove:
        head = head.replace(f'<Choice value="{label}"/>', "")
    head += "".join(f'  <Choice value="{label}"/>\n  ' for label in add)
    return head + end + tail


def save_labels_in_the_ui(env, config: str) -> httpx.Response:
    """The labelling interface settings: the editor validates the config, and Save patches the project (only
    when it validated). The validation answer."""
    validated = ui_call(env, "POST", f"/api/projects/{env['project']}/validate", {"label_config": config})
    if validated.status_code == 200:
        saved = ui_call(env, "PATCH", f"/api/projects/{env['project']}", {"label_config": config})
        assert saved.status_code == 200, saved.text
    return validated


def test_labels_added_and_removed_in_label_studios_settings_become_the_functions_label_set(
    labelstudio, tmp_path, monkeypatch
) -> None:
    """Two labels added in the project's labelling settings: the discovery sensor adopts them, the annotation
    sensor asks for retraining, items of the new label can be added, and the next version learns it (the one
    without examples waits). The unused one, removed there, leaves the label set and asks for retraining."""
    env = real_function(labelstudio, tmp_path, monkeypatch, "ls-label-config")
    function, client = env["function"], env["client"]
    config = client.get_label_config(env["project"])
    assert labels_from_label_config(config) == ["positive", "negative"]
    assert config.count('<Choice value="positive"/>') == 1  # the labels stand in the label control only
    add_labelled(env, tmp_path, {t: "positive" for t in POSITIVE} | {t: "negative" for t in NEGATIVE})
    assert run(env).success
    trained, _ = sensor_tick(env)
    assert isinstance(trained, SensorResult)

    def discover():
        context = build_sensor_context(instance=env["instance"], resources={"loopml": env["resources"]["loopml"]})
        return function_discovery_sensor(context)

    def registered() -> list[str]:
        return FunctionRegistry(env["settings"]).get(function).labels

    assert save_labels_in_the_ui(env, _edited_label_config(env, add=("neutral", "mixed"))).status_code == 200
    adopted = discover()
    assert isinstance(adopted, SkipReason) and f"{function}: added ['neutral', 'mixed']" in adopted.skip_message
    assert registered() == ["positive", "negative", "neutral", "mixed"]
    assert "no label set changes" in discover().skip_message  # adopted once
    retrain, _ = sensor_tick(env, trained.cursor)
    assert [(r.partition_key, r.tags["loopml/trigger"]) for r in retrain.run_requests] == [(function, "label-set")]

    add_labelled(env, tmp_path, dict.fromkeys(NEUTRAL, "neutral"))  # checked against the adopted label set
    learnt = run(env)
    model = learnt.output_for_node("model")
    assert model["label_set"] == ["positive", "negative", "neutral"] and model["labels_left_out"] == ["mixed"]
    decided = learnt.output_for_node("deployment")
    assert decided["decision"] == "canary" and decided["candidate"] == model["tag"] == f"{function}:v2"
    from loopml.encoders import get_encoder
    from serving.model_store import load_classifier

    classifier = load_classifier(env["settings"], model["tag"])
    texts = [NEUTRAL[1], POSITIVE[1]]
    answers = classifier.predict_proba(texts, get_encoder(classifier.encoder_id).encode(texts)).argmax(axis=1)
    assert [classifier.label_set[i] for i in answers] == ["neutral", "positive"]
    learnt_tick, _ = sensor_tick(env, retrain.cursor)

    assert save_labels_in_the_ui(env, _edited_label_config(env, remove=("mixed",))).status_code == 200
    assert f"{function}: removed ['mixed']" in discover().skip_message
    assert registered() == ["positive", "negative", "neutral"]
    assert labels_from_label_config(client.get_label_config(env["project"])) == registered()
    removed, _ = sensor_tick(env, learnt_tick.cursor)
    assert [r.tags["loopml/trigger"] for r in removed.run_requests] == ["label-set"]


def test_preannotation_goes_chunk_by_chunk_until_every_unlabelled_task_has_the_primarys_answer(
    labelstudio, tmp_path, monkeypatch
) -> None:
    """Twenty unlabelled tasks in chunks of eight: three chunks embedded, scored and imported, each logged and
    observed with its progress; every unlabelled task in Label Studio then carries the primary's prediction,
    and the project shows that version's predictions with uncertainty sampling."""
    env = real_function(labelstudio, tmp_path, monkeypatch, "ls-preannotate")
    unlabelled = [f"{NEUTRAL[i % len(NEUTRAL)]}, scene {i}" for i in range(20)]
    labelled = {text: "positive" for text in POSITIVE} | {text: "negative" for text in NEGATIVE}
    add_labelled(env, tmp_path, labelled | dict.fromkeys(unlabelled))
    assert run(env).success
    version = "ls-preannotate:v1"
    monkeypatch.setattr(preannotations_module, "CHUNK_TASKS", 8)

    result = _materialize(env, preannotations)
    meta = result.asset_materializations_for_node("preannotations")[0].metadata
    assert meta["complete"].value is True and meta["model_version"].value == version
    assert meta["predictions"].value == meta["newly_embedded"].value == 20 and meta["tasks_left"].value == 0
    observed = [o.metadata for o in result.asset_observations_for_node("preannotations")]
    assert [(o["tasks_done"].value, o["tasks_total"].value) for o in observed] == [(8, 20), (16, 20), (20, 20)]
    logged = [entry.user_message for entry in env["instance"].all_logs(result.run_id)]
    assert all(any(f"({version}), chunk {n}/3: " in message for message in logged) for n in (1, 2, 3))

    client = env["client"]
    pending = {task.task_id: task.data["text"] for task in client.unlabeled_tasks(env["project"], limit=100)}
    assert sorted(pending.values()) == sorted(unlabelled)
    project = client.sdk.projects.get(id=env["project"])
    assert (project.model_version, project.sampling) == (version, "Uncertainty sampling")
    for task_id in pending:  # each opens with the primary's answer pre-filled, once
        ((shown_version, label, score),) = shown_in_the_ui(env, task_id)
        assert shown_version == version and label in ("positive", "negative") and 0.5 <= score <= 1.0


def test_drift_in_the_calls_sends_a_larger_review_to_label_studio(labelstudio, tmp_path, monkeypatch) -> None:
    """Logged calls that drift away from the training data: the drift report says so, the drift sensor requests
    a review run at four times the budget, and that run puts as many calls into the real project, each with its
    `review_reason` and the answer it got pre-filled."""
    monkeypatch.setenv("LOOPML_REVIEW_BUDGET", "10")
    env = real_function(labelstudio, tmp_path, monkeypatch, "ls-drift-review")
    function, client = env["function"], env["client"]
    add_labelled(env, tmp_path, TRAINING)
    assert run(env).success
    _log_calls(env, SIMILAR)
    _log_calls(env, SHIFTED * 2)  # the newest calls are mostly about something else

    report = _materialize(env, drift_report).output_for_node("drift_report")
    assert report["drifted"] and report["input_drifted"], report
    requested = drift_sensor(build_sensor_context(instance=env["instance"]))
    assert isinstance(requested, SensorResult)
    (request,) = requested.run_requests
    assert (request.job_name, request.partition_key, request.tags[BUDGET_TAG]) == ("review_function", function, "40")

    review = defs.resolve_job_def(request.job_name).execute_in_process(
        instance=env["instance"], partition_key=request.partition_key, tags=request.tags
    )
    assert review.success
    meta = review.asset_materializations_for_node("review_set")[0].metadata
    assert meta["period_budget"].value == 40 and meta["sent_to_labelstudio"].value == 40  # not the usual 10
    selected = {row["input_text"]: row for row in review.output_for_node("review_set").to_dicts()}
    assert len(selected) == 40 and set(selected) & set(SHIFTED)  # the drifted calls among them

    pushed = [t for t in client.unlabeled_tasks(env["project"], limit=1000) if t.meta.get("loopml_source") == "review"]
    assert sorted(task.data["text"] for task in pushed) == sorted(selected)
    for task in pushed:
        row = selected[task.data["text"]]
        assert task.data["review_reason"] == row["reason"] and task.meta["invocation_id"] == row["invocation_id"]
        ((version, label, score),) = shown_in_the_ui(env, task.task_id)  # the answer it got, pre-filled
        assert (version, label) == (f"{function}:v1", row["label"])
        assert score == pytest.approx(row["confidence"], abs=1e-4)
