"""The deep tiers (images; texts when switched on): a fine-tuned network tail learns, is judged against the
AutoML model on the same items' out-of-fold answers, is registered only when it wins by more than the noise, and
then serves as its own version through the same gate and canary as any other."""

from __future__ import annotations

import base64

import numpy as np
from dagster import materialize

from loopml.automl.deep import DeepConfig, DeepImageClassifier, compare_out_of_fold, fit_deep_candidate
from loopml.deployments import DeploymentStore
from loopml.encoders import get_encoder
from loopml.functions import FunctionSpec, render_label_config
from serving.model_store import list_versions, load_classifier
from tests.serving_support import IMAGE_ENCODER, png
from tests.test_pipeline import ASSETS, annotate_all, env, fake_function, run  # noqa: F401 - env is a fixture

SMALL = DeepConfig(epochs=4, views=2, folds=2, batch_size=16, time_budget_s=120, min_per_class=4)


def uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def tones(n: int, seed: int = 0) -> tuple[list[bytes], list[str]]:
    """``n`` light and ``n`` dark noisy pictures with their labels."""
    light = [png(235 - 3 * i, seed=seed + i) for i in range(n)]
    dark = [png(20 + 3 * i, seed=seed + 100 + i) for i in range(n)]
    return light + dark, ["light"] * n + ["dark"] * n


def deep_said_better(monkeypatch) -> None:
    """From now on the paired comparison calls the deep candidate better (as if AutoML had missed every other
    item): where this is used the decision path is under test; the statistics have their own test."""
    import loopml.automl.deep

    real = loopml.automl.deep.compare_out_of_fold

    def evidence(deep_ok: np.ndarray, automl_ok: np.ndarray) -> loopml.automl.deep.DeepComparison:
        half = np.arange(len(automl_ok)) % 2 == 0
        return real(np.ones(len(deep_ok), dtype=bool), half)

    monkeypatch.setattr(loopml.automl.deep, "compare_out_of_fold", evidence)


def test_the_paired_comparison_needs_a_gain_beyond_the_noise() -> None:
    rng = np.random.default_rng(0)
    automl = rng.random(400) < 0.8
    assert not compare_out_of_fold(automl, automl).better  # equal: no churn
    noisy = automl.copy()
    noisy[rng.choice(400, 6, replace=False)] ^= True  # a handful of items changed either way: noise
    assert not compare_out_of_fold(noisy, automl).better
    better = automl | (rng.random(400) < 0.5)  # right wherever AutoML was, and on half of its mistakes
    result = compare_out_of_fold(better, automl)
    assert result.better and result.gain > 2 * result.standard_error
    assert "better by the 2-standard-error rule" in result.reason
    assert not compare_out_of_fold(automl, better).better  # worse is never better


def test_a_deep_candidate_learns_calibrates_and_round_trips(tmp_path) -> None:
    """Cross-validated, calibrated and refit; the saved version holds the tail only (a few MB) and answers the
    same after loading; it reads the pictures themselves, not pooled embeddings."""
    images, labels = tones(8)
    encoder = get_encoder(IMAGE_ENCODER)
    result = fit_deep_candidate(encoder, [uri(i) for i in images], labels, ["light", "dark"], SMALL)
    assert result.cv_accuracy >= 0.9 and result.temperature > 0
    assert len(result.epochs) == 3 and result.oof_proba.shape == (16, 2)
    model = result.model
    assert not model.needs_embeddings
    assert 1_000_000 < model.memory_bytes() < 10_000_000  # the last block, head convolution and classifier
    fresh, _ = tones(3, seed=500)
    proba = model.predict_proba(fresh)
    assert proba.shape == (6, 2) and np.allclose(proba.sum(axis=1), 1)
    assert model.predict(fresh) == ["light"] * 3 + ["dark"] * 3
    model.save(tmp_path / "deep")
    loaded = DeepImageClassifier.load(tmp_path / "deep")
    assert np.allclose(loaded.predict_proba(fresh), proba, atol=1e-5)
    assert loaded.label_set == ["light", "dark"] and loaded.encoder_id == IMAGE_ENCODER


def test_the_deep_tier_runs_in_its_own_job_and_deploys_only_on_evidence(tmp_path, monkeypatch) -> None:
    """After the AutoML loop, ``deep_model`` + ``deep_deployment``: where AutoML is already right on every item
    nothing is registered; a candidate that cross-validation calls better becomes the next version and goes
    through the gate to a canary, loaded as a deep version; a text function is skipped with the reason."""
    from assets.deep_model import deep_model
    from assets.deployment import deep_deployment

    monkeypatch.setenv("LOOPML_DEEP_MIN_PER_CLASS", "4")
    monkeypatch.setenv("LOOPML_DEEP_EPOCHS", "3")
    monkeypatch.setenv("LOOPML_DEEP_TIME_BUDGET_S", "120")
    images, labels = tones(10)
    spec = FunctionSpec("tone", "image", ["light", "dark"], IMAGE_ENCODER)
    with fake_function(
        tmp_path,
        monkeypatch,
        spec,
        [{"data": {"image": uri(i)}} for i in images],
        render_label_config("image", spec.labels),
    ) as made:
        settings, fake, project, instance, resources = (
            made[k] for k in ("settings", "fake", "project", "instance", "resources")
        )
        for tid, label in zip(fake.projects[project], labels, strict=True):
            fake.create_annotation(tid, label, to_name="image")
        assert materialize(ASSETS, instance=instance, partition_key="tone", resources=resources).success
        deep = [deep_model, deep_deployment, *[a.to_source_asset() for a in ASSETS]]

        first = materialize(deep, instance=instance, partition_key="tone", resources=resources)
        assert first.success
        output = first.output_for_node("deep_model")
        assert output["selected"] is False and "not better" in output["reason"]
        assert output["automl_cv_accuracy"] == 1.0 and output["compared_with"] == "tone:v1"
        assert first.output_for_node("deep_deployment")["decision"] == "not_selected"
        assert [v.tag for v in list_versions(settings, "tone")] == ["tone:v1"]

        deep_said_better(monkeypatch)
        second = materialize(deep, instance=instance, partition_key="tone", resources=resources)
        assert second.success
        output = second.output_for_node("deep_model")
        assert output["selected"] is True and output["tag"] == "tone:v2"
        assert 1_000_000 < output["memory_bytes"] < 10_000_000
        deployed = second.output_for_node("deep_deployment")
        assert deployed["decision"] == "canary" and deployed["candidate"] == "tone:v2", deployed["reason"]
        assert DeploymentStore(settings).get("tone").canary_tag == "tone:v2"
        classifier = load_classifier(settings, "tone:v2")
        assert isinstance(classifier, DeepImageClassifier)
        assert classifier.predict(tones(2, seed=900)[0]) == ["light", "light", "dark", "dark"]


def test_a_text_function_skips_the_deep_tier(env) -> None:
    from assets.deep_model import deep_model

    annotate_all(env["fake"], env["project"])
    assert run(env).success
    result = materialize(
        [deep_model, *[a.to_source_asset() for a in ASSETS]],
        instance=env["instance"],
        partition_key="sentiment",
        resources=env["resources"],
    )
    output = result.output_for_node("deep_model")
    assert output["selected"] is False and "text deep tier is off" in output["reason"]


def test_with_the_text_tier_on_a_text_function_fine_tunes_minilm_and_deploys_only_on_evidence(env, monkeypatch) -> None:
    """``LOOPML_TEXT_DEEP=1``: ``deep_model`` fine-tunes MiniLM on the text function's training split and compares
    it with the AutoML run item by item; where AutoML is right on every item nothing registers; a candidate that
    cross-validation calls better becomes the next version, passes the gate to a canary and loads as a text deep
    version that answers texts itself."""
    from assets.deep_model import deep_model
    from assets.deployment import deep_deployment
    from loopml.automl.text_deep import TextDeepClassifier

    monkeypatch.setenv("LOOPML_TEXT_DEEP", "1")
    monkeypatch.setenv("LOOPML_TEXT_DEEP_LAYERS", "1")
    monkeypatch.setenv("LOOPML_DEEP_MIN_PER_CLASS", "3")
    monkeypatch.setenv("LOOPML_DEEP_TIME_BUDGET_S", "120")
    annotate_all(env["fake"], env["project"])
    assert run(env).success
    deep = [deep_model, deep_deployment, *[a.to_source_asset() for a in ASSETS]]
    settings = env["settings"]

    first = materialize(deep, instance=env["instance"], partition_key="sentiment", resources=env["resources"])
    assert first.success
    output = first.output_for_node("deep_model")
    assert output["train_layers"] == 1 and output["steps_run"] > 0
    assert output["compared_with"] == "sentiment:v1" and 0.0 <= output["deep_cv_accuracy"] <= 1.0
    if output["automl_cv_accuracy"] == 1.0:  # nothing to gain over AutoML: nothing registers
        assert output["selected"] is False and "not better" in output["reason"]
        assert [v.tag for v in list_versions(settings, "sentiment")] == ["sentiment:v1"]

    deep_said_better(monkeypatch)
    second = materialize(deep, instance=env["instance"], partition_key="sentiment", resources=env["resources"])
    assert second.success
    output = second.output_for_node("deep_model")
    tag = output["tag"]
    assert output["selected"] is True and tag == list_versions(settings, "sentiment")[-1].tag
    assert 1_000_000 < output["memory_bytes"] < 10_000_000  # one MiniLM layer and a head
    deployed = second.output_for_node("deep_deployment")
    assert deployed["decision"] == "canary" and deployed["candidate"] == tag, deployed["reason"]
    assert DeploymentStore(settings).get("sentiment").canary_tag == tag
    classifier = load_classifier(settings, tag)
    assert isinstance(classifier, TextDeepClassifier) and classifier.train_layers == 1
    assert classifier.predict(["I loved this film, wonderful acting"]) in (["positive"], ["negative"])


def test_the_deep_tier_runs_nightly_for_image_functions_that_serve_a_model(settings, monkeypatch) -> None:
    """``nightly_deep_training`` asks for one ``train_deep_function`` run per image function with a primary; a
    text function (unless ``LOOPML_TEXT_DEEP=1``) and an image function without a model get none."""
    from datetime import UTC, datetime

    from dagster import SkipReason, build_schedule_context, instance_for_test

    from assets.resources import LoopMLResource
    from loopml.functions import FunctionRegistry
    from pipelines.definitions import defs
    from pipelines.schedules import nightly_deep_training

    schedule = defs.resolve_schedule_def("nightly_deep_training")
    assert schedule.cron_schedule == "0 4 * * *"
    job = defs.resolve_job_def(schedule.job_name)
    assert {n.name for n in job.graph.node_defs} == {"deep_model", "deep_deployment"}
    registry = FunctionRegistry(settings)
    for name, kind in (("photos", "image"), ("fresh-photos", "image"), ("sentiment", "text")):
        registry.add(FunctionSpec(name, kind, ["a", "b"], IMAGE_ENCODER if kind == "image" else "minilm-l6-int8"))
    when = datetime(2026, 12, 5, 4, 0, tzinfo=UTC)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("functions", ["photos", "fresh-photos", "sentiment"])

        def evaluate() -> list:
            resources = {"loopml": LoopMLResource()}
            with build_schedule_context(instance=instance, scheduled_execution_time=when, resources=resources) as ctx:
                return list(nightly_deep_training(ctx))

        (skipped,) = evaluate()
        assert isinstance(skipped, SkipReason)
        store = DeploymentStore(settings)
        store.set_primary("photos", "photos:v1", "first version")
        store.set_primary("sentiment", "sentiment:v1", "first version")
        requests = evaluate()
        monkeypatch.setenv("LOOPML_TEXT_DEEP", "1")
        with_text = evaluate()
    assert [(r.partition_key, r.run_key) for r in requests] == [("photos", "deep:photos:2026-12-05")]
    assert [r.partition_key for r in with_text] == ["photos", "sentiment"]
