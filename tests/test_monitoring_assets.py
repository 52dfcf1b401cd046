"""review_set, drift_report and the drift sensor in-process: logged calls (the serving API's invocation log)
become review tasks in (fake) Label Studio; a shifted stream of calls shows drift, an unshifted one does not."""

from __future__ import annotations

import os

import numpy as np
from dagster import SensorResult, SkipReason, build_sensor_context, materialize

from assets.monitoring import drift_report
from assets.review import BUDGET_TAG, review_set
from loopml.encoders import get_encoder
from loopml.invocation_log import InvocationLog, InvocationRecord, embedding_to_bytes
from pipelines.drift import drift_sensor
from tests.test_pipeline import ASSETS, env, run  # noqa: F401 - env is a fixture

GOOD = ["wonderful", "brilliant", "delightful", "superb", "moving", "charming", "excellent", "lovely"]
BAD = ["dreadful", "boring", "awful", "tedious", "terrible", "dull", "clumsy", "painful"]
THINGS = ["film", "story", "script", "cast", "ending", "plot", "score", "finale"]
FRAMES = ["a {w} {t}, I {v} it", "the {t} was {w}, I {v} it", "what a {w} {t}; I {v} it", "{w} {t} overall, I {v} it"]
CORPUS = {
    frame.format(w=w, t=t, v=verb): label
    for words, verb, label in ((GOOD, "enjoyed", "positive"), (BAD, "regretted", "negative"))
    for w in words
    for t in THINGS
    for frame in FRAMES
}
# two thirds annotated (a holdout of about 70: the drift report's reference), one third arrives as live calls
TRAINING = {text: label for i, (text, label) in enumerate(CORPUS.items()) if i % 3}
SIMILAR = [text for i, text in enumerate(CORPUS) if not i % 3]
SHIFTED = [
    f"{m} shares {v} {n} percent after the {e} report"
    for m in ("bank", "oil", "tech", "retail")
    for v in ("rose", "fell", "slid")
    for n in ("two", "five", "eight")
    for e in ("quarterly", "annual")
]


def _train(env, items: dict[str, str] = TRAINING) -> None:
    """Import ``items`` ({text: label}) into the fake Label Studio, annotate them and train v1."""
    fake, project = env["fake"], env["project"]
    fake.import_tasks(project, [{"data": {"text": t}} for t in items])
    for tid in fake.projects[project]:
        text = fake.tasks[tid].data["text"]
        if text in items:
            fake.create_annotation(tid, items[text])
    assert run(env).success


def _log_calls(env, texts: list[str], *, confidence: float | None = None) -> list[str]:
    """Invocations as the serving API logs them: answered by the primary v1 (its own scores unless a
    ``confidence`` is forced for the first label)."""
    from serving.model_store import load_classifier

    vectors = get_encoder("minilm-l6-int8").encode(texts)
    version = f"{env['function']}:v1"
    classifier = load_classifier(env["settings"], version)
    labels = list(classifier.label_set)
    if confidence is None:
        scores = classifier.predict_proba(texts, vectors)
    else:
        scores = np.tile([confidence, 1 - confidence], (len(texts), 1))
    log = InvocationLog(env["settings"])
    records = [
        InvocationRecord(
            function=env["function"],
            input_text=text,
            embedding=embedding_to_bytes(vector),
            scores={version: [float(x) for x in row]},
            labels={version: labels},
            answered_by=version,
            label=labels[int(np.argmax(row))],
            confidence=float(np.max(row)),
            latency_ms=5.0,
        )
        for text, vector, row in zip(texts, vectors, scores, strict=True)
    ]
    ids = log.log_many(records)
    log.close()
    return ids


def _materialize(env, asset, tags=None):
    return materialize(
        [asset, *[a.to_source_asset() for a in ASSETS]],
        instance=env["instance"],
        partition_key=env["function"],
        resources=env["resources"],
        tags=tags,
    )


def test_low_confidence_and_flagged_calls_become_review_tasks_that_train_as_review(env) -> None:
    _train(env)
    fake, project = env["fake"], env["project"]
    unsure = _log_calls(env, ["an odd, uneven picture", "not sure what to make of it"], confidence=0.52)
    sure = _log_calls(env, SIMILAR[:20])
    InvocationLog(env["settings"]).record_feedback(sure[3], flagged=True, true_label="negative")

    result = _materialize(env, review_set)
    selected = result.output_for_node("review_set")
    reasons = dict(zip(selected["invocation_id"].to_list(), selected["reason"].to_list(), strict=True))
    assert reasons[sure[3]] == "flagged"
    # a young model (a few examples per label): unfamiliar calls take the room first, low confidence applies too
    every = dict(zip(selected["invocation_id"].to_list(), selected["reasons"].to_list(), strict=True))
    assert all("low_confidence" in every[i] for i in unsure)
    meta = result.asset_materializations_for_node("review_set")[0].metadata
    assert meta["sent_to_labelstudio"].value == selected.height
    # the round's summary page, behind a signed link to the serving API: every selected call with its reason
    from urllib.parse import parse_qs, urlsplit

    from loopml.report_links import report_path, verify

    url = urlsplit(meta["summary_url"].value)
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert verify(env["settings"], url.path, query["expires"], query["signature"])
    summary = report_path(env["settings"], "sentiment", url.path.rsplit("/", 1)[1])
    assert summary is not None and summary.name.startswith("review-")
    page = summary.read_text(encoding="utf-8")
    assert all(str(i) in page for i in selected["invocation_id"].to_list())
    assert "an odd, uneven picture" in page and f"{selected.height} selected" in page

    pushed = {fake.tasks[t].data["text"]: fake.tasks[t] for t in fake.projects[project]}
    task = pushed["an odd, uneven picture"]
    assert task.meta["loopml_source"] == "review" and task.data["review_reason"] == reasons[unsure[0]]

    again = _materialize(env, review_set)  # the window moved on: nothing is sent twice
    assert again.asset_materializations_for_node("review_set")[0].metadata["sent_to_labelstudio"].value == 0

    fake.create_annotation(task.task_id, "negative")
    retrained = run(env)
    data = retrained.output_for_node("dataset")
    row = data.filter(data["text"] == "an odd, uneven picture").to_dicts()[0]
    assert (row["source"], row["label"]) == ("review", "negative")
    assert retrained.output_for_node("model")["tag"] == "sentiment:v2"


def test_the_review_budget_is_per_function_and_period(env, monkeypatch) -> None:
    """What earlier runs of the period sent counts against the function's budget; drift raises the period's."""
    monkeypatch.setenv("LOOPML_REVIEW_BUDGET", "50")
    monkeypatch.setenv("LOOPML_REVIEW_BUDGETS", "other=7, sentiment=3")
    monkeypatch.setenv("LOOPML_REVIEW_CAPS", "low_confidence=2")
    _train(env)
    _log_calls(env, SIMILAR[:10], confidence=0.51)
    first = _materialize(env, review_set)
    meta = first.asset_materializations_for_node("review_set")[0].metadata
    assert meta["sent_to_labelstudio"].value == 3 and meta["period_budget"].value == 3
    assert meta["caps"].value["low_confidence"] == 2 and meta["caps"].value["flagged"] == 20  # over the defaults
    assert first.output_for_node("review_set")["reason"].to_list().count("low_confidence") <= 2

    _log_calls(env, SIMILAR[10:20], confidence=0.51)
    spent = _materialize(env, review_set).asset_materializations_for_node("review_set")[0].metadata
    assert spent["sent_to_labelstudio"].value == 0 and spent["sent_earlier_in_period"].value == 3

    _log_calls(env, SIMILAR[20:30], confidence=0.51)
    raised = _materialize(env, review_set, tags={BUDGET_TAG: "5"})  # what the drift sensor asks for
    meta = raised.asset_materializations_for_node("review_set")[0].metadata
    assert meta["sent_to_labelstudio"].value == 2 and meta["period_budget"].value == 5

    monkeypatch.setenv("LOOPML_REVIEW_PERIOD_HOURS", "0")  # a new period: the budget is whole again
    _log_calls(env, SIMILAR[30:40], confidence=0.51)
    fresh = _materialize(env, review_set).asset_materializations_for_node("review_set")[0].metadata
    assert fresh["sent_to_labelstudio"].value == 3 and fresh["sent_earlier_in_period"].value == 0


def test_drift_is_detected_on_a_shifted_stream_and_not_on_an_unshifted_one(env) -> None:
    _train(env)
    _log_calls(env, SIMILAR)
    calm = _materialize(env, drift_report).output_for_node("drift_report")
    assert calm["status"] == "ok" and not calm["drifted"], calm
    context = build_sensor_context(instance=env["instance"])
    quiet = drift_sensor(context)
    assert isinstance(quiet, SensorResult) and not quiet.run_requests  # read the report, found no drift
    cursor = quiet.cursor

    _log_calls(env, SHIFTED * 2)  # the newest calls are now mostly about something else
    report = _materialize(env, drift_report)
    shifted = report.output_for_node("drift_report")
    assert shifted["input_drifted"] and shifted["drifted"], shifted
    html = report.asset_materializations_for_node("drift_report")[0].metadata["report"].value
    page = open(html, encoding="utf-8").read()
    assert html.endswith(".html") and "<html" in page and "root_metric" in page  # Evidently's rendered report
    # the one-click link: the serving API's route of this report, signed (tests/test_report_links.py serves it)
    from urllib.parse import parse_qs, urlsplit

    from loopml.report_links import verify

    url = urlsplit(report.asset_materializations_for_node("drift_report")[0].metadata["report_url"].value)
    assert f"{url.scheme}://{url.netloc}" == env["settings"].serving_url
    assert url.path == f"/v1/functions/sentiment/reports/{os.path.basename(html)}"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert verify(env["settings"], url.path, query["expires"], query["signature"])

    raised = drift_sensor(build_sensor_context(instance=env["instance"], cursor=cursor))
    assert isinstance(raised, SensorResult)
    (request,) = raised.run_requests
    assert request.job_name == "review_function" and request.partition_key == "sentiment"
    assert int(request.tags[BUDGET_TAG]) == 200
    assert isinstance(drift_sensor(build_sensor_context(instance=env["instance"], cursor=raised.cursor)), SkipReason)

    os.environ["LOOPML_RETRAIN_ON_DRIFT"] = "true"  # configured: the same drift also requests retraining
    try:
        both = drift_sensor(build_sensor_context(instance=env["instance"], cursor=cursor))
    finally:
        del os.environ["LOOPML_RETRAIN_ON_DRIFT"]
    assert sorted(r.job_name for r in both.run_requests) == ["review_function", "train_function"]


def test_monitoring_runs_hourly_for_every_function_that_serves_a_model(settings) -> None:
    """The hourly schedule asks, per function that serves a model, for a run of the job that builds the drift
    report and then the review set; a function without a model yet (no dataset, no calls) gets no run, which
    would only fail."""
    from datetime import UTC, datetime

    from dagster import SkipReason, build_schedule_context, instance_for_test

    from assets.resources import LoopMLResource
    from loopml.deployments import DeploymentStore
    from pipelines.definitions import defs
    from pipelines.schedules import hourly_monitoring, nightly_retraining

    schedule = defs.resolve_schedule_def("hourly_monitoring")
    assert schedule.cron_schedule == "7 * * * *"
    job = defs.resolve_job_def(schedule.job_name)
    assert {n.name for n in job.graph.node_defs} == {"drift_report", "review_set"}
    when = datetime(2026, 11, 28, 14, 7, tzinfo=UTC)
    resources = {"loopml": LoopMLResource()}
    with instance_for_test() as instance:  # a schedule's context needs an instance with a ref
        instance.add_dynamic_partitions("functions", ["sentiment", "topics", "young"])

        def evaluate(schedule_fn):
            with build_schedule_context(instance=instance, scheduled_execution_time=when, resources=resources) as ctx:
                return list(schedule_fn(ctx))

        (skipped,) = evaluate(hourly_monitoring)
        assert isinstance(skipped, SkipReason) and "young" in skipped.skip_message
        store = DeploymentStore(settings)
        store.set_primary("sentiment", "sentiment:v1", "first version")
        store.set_primary("topics", "topics:v1", "first version")
        requests = evaluate(hourly_monitoring)
        nightly = evaluate(nightly_retraining)
    assert sorted(r.partition_key for r in requests) == ["sentiment", "topics"]
    assert {r.run_key for r in requests} == {"hourly:sentiment:2026-11-28T14", "hourly:topics:2026-11-28T14"}
    assert sorted(r.partition_key for r in nightly) == ["sentiment", "topics"]


def test_a_young_model_gets_no_drift_verdict(env) -> None:
    """Trained on a few dozen items (no holdout worth the name), the reference is the out-of-fold answers on
    too few items: the report says so instead of raising alarms."""
    positive = [t for t, label in TRAINING.items() if label == "positive"][:20]
    negative = [t for t, label in TRAINING.items() if label == "negative"][:20]
    _train(env, {t: TRAINING[t] for t in positive + negative})
    _log_calls(env, SHIFTED * 2)
    report = _materialize(env, drift_report).output_for_node("drift_report")
    assert report["status"] == "not_enough_data" and not report["drifted"], report


def test_a_call_the_canary_answered_goes_to_review_with_the_primarys_answer_too() -> None:
    """Label Studio pre-fills the project's model version (the primary): a call the canary answered carries the
    primary's logged answer first, so the annotator still sees a suggestion."""
    from assets.review import review_task
    from loopml.labelstudio import PREFILLED_META, extract_label

    row = {
        "input_text": "a film",
        "reason": "disagreement",
        "invocation_id": "abc",
        "label": "negative",
        "confidence": 0.55,
        "primary_answer": "positive",
    }
    by_canary = review_task(row, "fn:v3", primary="fn:v2")
    assert [(p["model_version"], extract_label(p["result"])) for p in by_canary["predictions"]] == [
        ("fn:v2", "positive"),
        ("fn:v3", "negative"),
    ]
    assert by_canary["meta"][PREFILLED_META] == "fn:v2" and by_canary["data"]["review_reason"] == "disagreement"
    by_primary = review_task(row, "fn:v2", primary="fn:v2")
    assert [p["model_version"] for p in by_primary["predictions"]] == ["fn:v2"]
    assert by_primary["predictions"][0]["score"] == 0.55
    image = review_task({**row, "input_text": "data:image/jpeg;base64,AAAA"}, "fn:v3", primary="fn:v2", key="image")
    assert image["data"]["image"] == "data:image/jpeg;base64,AAAA" and "text" not in image["data"]
    assert {r["to_name"] for p in image["predictions"] for r in p["result"]} == {"image"}  # the Image object
    unknown = review_task({**row, "primary_answer": None}, "fn:v3", primary="fn:v2")  # primary's answer not logged
    assert [p["model_version"] for p in unknown["predictions"]] == ["fn:v3"] and unknown["meta"][
        PREFILLED_META
    ] == "fn:v3"
