"""Pre-annotation passes that keep up with the primary: a pass stops (successfully) once its version no longer
serves, the sensor starts the new primary's pass at once, and that pass re-scores cached embeddings first,
encoding nothing twice. In-process Dagster, Label Studio replaced by the in-memory fake; no timing asserted."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from dagster import DagsterRunStatus, Definitions, RunsFilter, SensorResult, build_sensor_context

import assets.preannotations as preannotations_module
import loopml.encoders as encoders_module
from assets.preannotations import preannotations
from loopml.deployments import DeploymentStore
from loopml.labelstudio import Prediction, TaskRecord
from loopml.preannotate import Chunk, Progress, plan_chunks
from pipelines.follow_ups import preannotation_sensor
from pipelines.jobs import preannotate_function
from serving.model_store import list_versions
from tests.test_evolution_inspection import NEUTRAL, _materialize
from tests.test_pipeline import ASSETS, annotate_all, env, run  # noqa: F401 - env is a fixture

EXTRA = [f"{text}, part {i}" for i, text in enumerate(NEUTRAL)]  # six unlabelled tasks besides "unlabelled one"


@pytest.fixture
def two_versions(env, monkeypatch):
    """v1 serving, v2 registered (not primary), seven unlabelled tasks, embedding chunks of 2 tasks."""
    fake, project = env["fake"], env["project"]
    annotate_all(fake, project)
    assert run(env).success
    fake.create_annotation(fake.projects[project][-1], "positive")  # "unlabelled one": a second version
    assert run(env).success
    assert [v.version for v in list_versions(env["settings"], "sentiment")] == ["v1", "v2"]
    DeploymentStore(env["settings"]).set_primary("sentiment", "sentiment:v1", "v1 serves")
    fake.import_tasks(project, [{"data": {"text": text}} for text in EXTRA])
    monkeypatch.setattr(preannotations_module, "CHUNK_TASKS", 2)
    return env


def _imports(env, monkeypatch, after_first: Callable[[], None] | None = None) -> list[list[int]]:
    """Record the task ids of each import_predictions call; ``after_first`` runs once, after the first."""
    fake = env["fake"]
    calls: list[list[int]] = []
    original = fake.import_predictions

    def recording(project_id: int, predictions: list[Prediction]) -> int:
        calls.append([p.task_id for p in predictions])
        created = original(project_id, predictions)
        if len(calls) == 1 and after_first is not None:
            after_first()
        return created

    monkeypatch.setattr(fake, "import_predictions", recording)
    return calls


def _encoded(monkeypatch) -> list[str]:
    """Every text the encoder is asked to embed."""
    texts: list[str] = []
    original = encoders_module.get_encoder

    class Recording:
        def __init__(self, encoder_id: str) -> None:
            self.inner = original(encoder_id)

        def encode(self, batch: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
            texts.extend(batch)
            return self.inner.encode(batch, batch_size=batch_size, progress=progress)

    monkeypatch.setattr(encoders_module, "get_encoder", Recording)
    return texts


def _promote(env, tag: str) -> Callable[[], None]:
    return lambda: DeploymentStore(env["settings"]).set_primary("sentiment", tag, "promoted during the pass")


def _tick(env):
    context = build_sensor_context(instance=env["instance"], resources={"loopml": env["resources"]["loopml"]})
    return preannotation_sensor(context)


def _unlabelled(env) -> list[int]:
    fake = env["fake"]
    return [t for t in fake.projects[env["project"]] if not fake.tasks[t].annotations]


def _text(env, task_id: int) -> str:
    return env["fake"].tasks[task_id].data["text"]


def test_a_pass_whose_primary_moves_stops_after_the_chunk_successfully_and_says_by_whom(
    two_versions, monkeypatch
) -> None:
    env = two_versions
    calls = _imports(env, monkeypatch, after_first=_promote(env, "sentiment:v2"))
    result = _materialize(env, preannotations)
    assert result.success  # a normal state: never a failed run
    meta = result.asset_materializations_for_node("preannotations")[0].metadata
    assert meta["complete"].value is False and meta["superseded_by"].value == "sentiment:v2"
    assert meta["model_version"].value == "sentiment:v1"
    assert len(calls) == 1 and meta["predictions"].value == 2  # the chunk in flight, then nothing
    assert meta["tasks_left"].value == len(_unlabelled(env)) - 2 == 4
    assert env["fake"].model_versions[env["project"]] == "sentiment:v1"  # the chunk it finished is shown
    # the chunk it finished was reported as it went
    (observation,) = result.asset_observations_for_node("preannotations")
    assert observation.metadata["tasks_done"].value == 2 and observation.metadata["tasks_total"].value == 6


def test_a_primary_that_moves_before_the_first_chunk_costs_no_work(two_versions, monkeypatch) -> None:
    env = two_versions
    fake = env["fake"]
    listed = fake.unlabeled_tasks

    def promoted_while_listing(project_id: int, limit: int) -> list:
        tasks = listed(project_id, limit)
        _promote(env, "sentiment:v2")()
        return tasks

    monkeypatch.setattr(fake, "unlabeled_tasks", promoted_while_listing)
    calls, encoded = _imports(env, monkeypatch), _encoded(monkeypatch)
    result = _materialize(env, preannotations)
    meta = result.asset_materializations_for_node("preannotations")[0].metadata
    assert result.success and meta["superseded_by"].value == "sentiment:v2" and meta["predictions"].value == 0
    assert calls == [] and encoded == [] and env["project"] not in fake.model_versions


def test_the_sensor_asks_for_the_new_primary_right_after_a_superseded_run(two_versions, monkeypatch) -> None:
    """The superseded run (the real job, so the sensor sees it among the job's runs) succeeded: the sensor does
    not wait RETRY_AFTER_SECONDS as after a failure."""
    env = two_versions
    _imports(env, monkeypatch, after_first=_promote(env, "sentiment:v2"))
    job = Definitions(
        assets=[preannotations, *[a.to_source_asset() for a in ASSETS]],
        jobs=[preannotate_function],
        resources=env["resources"],
    ).resolve_job_def(preannotate_function.name)
    result = job.execute_in_process(instance=env["instance"], partition_key="sentiment")
    assert result.success
    assert result.asset_materializations_for_node("preannotations")[0].metadata["complete"].value is False
    (record,) = env["instance"].get_run_records(filters=RunsFilter(job_name=preannotate_function.name))
    assert record.dagster_run.status == DagsterRunStatus.SUCCESS

    requested = _tick(env)
    assert isinstance(requested, SensorResult)
    (request,) = requested.run_requests
    assert request.partition_key == "sentiment"
    assert request.tags == {"loopml/primary": "sentiment:v2", "loopml/trigger": "new-primary"}


def test_a_rollback_to_the_superseded_version_finishes_its_pass(two_versions, monkeypatch) -> None:
    env = two_versions
    _imports(env, monkeypatch, after_first=_promote(env, "sentiment:v2"))
    assert _materialize(env, preannotations).success  # v1's pass, cut short by v2
    _promote(env, "sentiment:v1")()  # v2 rolled back before its pass ran
    requested = _tick(env)
    assert isinstance(requested, SensorResult)
    assert requested.run_requests[0].tags == {"loopml/primary": "sentiment:v1", "loopml/trigger": "unfinished"}
    meta = _materialize(env, preannotations).asset_materializations_for_node("preannotations")[0].metadata
    assert meta["complete"].value is True and meta["predictions"].value == 4  # the rest only
    assert meta["already_preannotated"].value == 2 and meta["newly_embedded"].value == 4


def test_the_new_primarys_pass_rescores_cached_tasks_first_and_encodes_nothing_twice(two_versions, monkeypatch) -> None:
    env = two_versions
    fake, project = env["fake"], env["project"]
    first = _imports(env, monkeypatch, after_first=_promote(env, "sentiment:v2"))
    assert _materialize(env, preannotations).success  # v1 embedded one chunk, then stopped
    embedded_by_v1 = first[0]

    calls, encoded = _imports(env, monkeypatch), _encoded(monkeypatch)
    meta = _materialize(env, preannotations).asset_materializations_for_node("preannotations")[0].metadata
    assert meta["model_version"].value == "sentiment:v2" and meta["complete"].value is True
    assert calls[0] == embedded_by_v1  # the cached tasks, scored and imported first, in one chunk
    assert [len(c) for c in calls] == [2, 2, 2]  # then the tasks to embed, in embedding chunks
    assert meta["rescored_cached"].value == 2 and meta["newly_embedded"].value == 4
    assert not {_text(env, t) for t in embedded_by_v1} & set(encoded)  # nothing encoded twice
    assert {p.task_id for ps in fake.predictions.values() for p in ps if p.model_version == "sentiment:v2"} == set(
        _unlabelled(env)
    )
    assert fake.model_versions[project] == "sentiment:v2"

    encoded.clear()  # every task embedded now: the next primary's pass is scoring only, in one chunk
    _promote(env, "sentiment:v1")()
    calls.clear()
    meta = _materialize(env, preannotations).asset_materializations_for_node("preannotations")[0].metadata
    assert meta["newly_embedded"].value == 0 and meta["rescored_cached"].value == 6 == meta["predictions"].value
    assert [sorted(c) for c in calls] == [sorted(_unlabelled(env))] and encoded == []
    assert fake.model_versions[project] == "sentiment:v1"


def test_the_first_pass_reports_each_chunk_with_counts_rate_and_eta(two_versions) -> None:
    env = two_versions
    result = _materialize(env, preannotations)
    observations = [o.metadata for o in result.asset_observations_for_node("preannotations")]
    assert [o["tasks_done"].value for o in observations] == [2, 4, 6]
    assert all(o["tasks_total"].value == 6 and o["tasks_per_second"].value > 0 for o in observations)
    assert all("eta_seconds" in o for o in observations[:-1])  # known once a chunk of each kind was timed
    assert observations[-1]["eta_seconds"].value == 0
    meta = result.asset_materializations_for_node("preannotations")[0].metadata
    assert meta["complete"].value is True and meta["newly_embedded"].value == 6


def _task(task_id: int, text: str) -> TaskRecord:
    return TaskRecord(task_id=task_id, data={"text": text}, updated_at="", annotations=[], meta={})


def test_plan_chunks_puts_cached_tasks_first_in_big_chunks() -> None:
    tasks = [_task(i, f"text {i}") for i in range(1, 8)] + [_task(8, "   ")]
    hash_of = {t.task_id: f"h{t.task_id}" for t in tasks if t.data["text"].strip()}
    chunks = plan_chunks(tasks, hash_of, {"h2", "h5", "h7"}, embed_chunk=2, score_chunk=100)
    assert [([t.task_id for t in c.tasks], c.cached) for c in chunks] == [
        ([2, 5, 7, 8], True),  # cached (and the text-less task: nothing to embed)
        ([1, 3], False),
        ([4, 6], False),
    ]
    assert plan_chunks([], {}, set(), 2, 100) == []


def test_progress_rate_and_eta_count_scoring_and_embedding_apart() -> None:
    cached, new = Chunk([_task(i, "t") for i in range(100)], True), Chunk([_task(i, "t") for i in range(10)], False)
    progress = Progress.of([cached, new, new])
    assert (progress.total, progress.cached_total, progress.new_total) == (120, 100, 20)
    assert progress.eta_seconds() is None and progress.rate() == 0.0
    progress.add(cached, 0.5)
    assert progress.eta_seconds() is None  # embedding not timed yet
    assert "time left unknown" in progress.summary()
    progress.add(new, 5.0)  # 2 tasks/s embedding
    assert progress.eta_seconds() == pytest.approx(5.0)
    assert progress.rate() == pytest.approx(110 / 5.5)
    assert progress.summary() == (
        "110/120 tasks (10 embedded, 100 re-scored from cached embeddings), 20.0 tasks/s, about 5 s left"
    )
    progress.add(new, 5.0)
    assert progress.eta_seconds() == 0.0 and progress.summary().endswith("done")


def test_a_new_primary_of_a_fully_labelled_project_is_a_green_run(two_versions) -> None:
    """Every task labelled: nothing to pre-annotate, and Label Studio is not asked to show a version that has no
    predictions there (it answers 400 "Model version does not exist"): the run succeeds."""
    env = two_versions
    fake = env["fake"]
    for task_id in _unlabelled(env):
        fake.create_annotation(task_id, "positive")
    DeploymentStore(env["settings"]).set_primary("sentiment", "sentiment:v2", "v2 serves")
    result = _materialize(env, preannotations)
    meta = result.asset_materializations_for_node("preannotations")[0].metadata
    assert result.success and meta["predictions"].value == 0
    assert env["project"] not in fake.model_versions


def test_an_image_function_pre_annotates_the_picture_and_labels_the_image(tmp_path) -> None:
    """With ``key="image"`` the task's data URI is scored and the prediction targets the Image object, as the
    image label config names it (a text function's predictions target ``text``)."""
    from loopml.features import FeatureCache
    from loopml.preannotate import predict_tasks

    tasks = [
        TaskRecord(1, {"image": "data:image/png;base64,AAAA"}, "2026-12-04T00:00:00.000000Z", [], {}),
        TaskRecord(2, {"image": ""}, "2026-12-04T00:00:00.000000Z", [], {}),  # nothing to score
        TaskRecord(3, {"text": "a text in an image project"}, "2026-12-04T00:00:00.000000Z", [], {}),
    ]
    seen: list[list[str]] = []

    def encode(inputs: list[str]) -> np.ndarray:
        seen.append(inputs)
        return np.ones((len(inputs), 4), dtype=np.float32)

    result = predict_tasks(
        tasks,
        lambda inputs, emb: np.tile([0.2, 0.8], (len(inputs), 1)),
        ["cat", "dog"],
        "pets:v1",
        FeatureCache(tmp_path, "efficientnet-lite0-224"),
        encode,
        hash_of={1: "h1"},
        key="image",
    )
    assert seen == [["data:image/png;base64,AAAA"]]
    (prediction,) = result.predictions
    assert (prediction.task_id, prediction.label, prediction.to_name) == (1, "dog", "image")
    assert prediction.request()["result"][0]["to_name"] == "image"
