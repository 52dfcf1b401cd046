"""The platform as a user runs it: `loopml up` starts real services, the daemon's sensor trains by itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port
from tests.test_pipeline import NEGATIVE, POSITIVE

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


def loopml(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loopml.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def platform_env(tmp_path):
    env = dict(os.environ)
    env.update(
        LOOPML_HOME=str(tmp_path / "home"),
        LOOPML_LABELSTUDIO_PORT=str(free_port()),
        LOOPML_DAGSTER_PORT=str(free_port()),
        LOOPML_SERVING_PORT=str(free_port()),
        LOOPML_ANNOTATION_POLL_SECONDS="1",
    )
    yield env
    loopml(env, "down", timeout=120)


def test_up_create_annotate_and_the_daemon_trains_a_model(platform_env, monkeypatch) -> None:
    up = loopml(platform_env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "Label Studio" in up.stdout and "Dagster" in up.stdout
    status = loopml(platform_env, "status")
    for service in ("labelstudio", "dagster-webserver", "dagster-daemon", "run-worker", "serving"):
        assert any(line.split()[:2] == [service, "healthy"] for line in status.stdout.splitlines()), status.stdout

    created = loopml(platform_env, "functions", "create", "platform-sentiment", "--labels", "positive,negative")
    assert created.returncode == 0, created.stdout + created.stderr

    for key in ("LOOPML_HOME", "LOOPML_LABELSTUDIO_PORT", "LOOPML_DAGSTER_PORT", "LOOPML_SERVING_PORT"):
        monkeypatch.setenv(key, platform_env[key])
    from loopml.config import get_settings
    from loopml.functions import FunctionRegistry
    from loopml.labelstudio import LabelStudioClient
    from serving.model_store import list_versions

    settings = get_settings()
    client = LabelStudioClient.from_settings(settings)
    project = FunctionRegistry(settings).get("platform-sentiment").labelstudio_project_id
    client.import_tasks(project, [{"data": {"text": t}} for t in POSITIVE + NEGATIVE])
    for task in client.unlabeled_tasks(project, limit=100):
        client.create_annotation(task.task_id, "positive" if task.data["text"] in POSITIVE else "negative")
    client.import_tasks(project, [{"data": {"text": "a warm and wonderful film"}}])  # left for pre-annotation

    deadline = time.time() + 240
    while time.time() < deadline and not list_versions(settings, "platform-sentiment"):
        time.sleep(1)
    versions = list_versions(settings, "platform-sentiment")
    assert [v.version for v in versions] == ["v1"], (settings.run_dir / "dagster-daemon.log").read_text()[-3000:]
    assert versions[0].metadata["cv_accuracy"] >= 0.7

    # the daemon's run also deployed it: the running service answers with v1 (hot-loaded, no restart)
    created_key = loopml(platform_env, "keys", "create", "platform-test")
    secret = created_key.stdout.strip().splitlines()[-1]
    url = f"{settings.serving_url}/v1/functions/platform-sentiment/invoke"
    assert requests.post(url, json={"text": "great film"}, timeout=10).status_code == 401
    answer = {}
    deadline = time.time() + 30
    while time.time() < deadline and answer.get("version") != "platform-sentiment:v1":
        response = requests.post(url, json={"text": "a wonderful, moving film"}, timeout=10,
                                 headers={"Authorization": f"Bearer {secret}"})
        answer = response.json() if response.ok else {}
        time.sleep(0.5)
    assert answer.get("version") == "platform-sentiment:v1" and answer["label"] == "positive", answer

    # runs fork from the warm run worker
    from dagster import DagsterInstance, RunsFilter

    from pipelines.run_worker import PID_TAG

    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        runs = instance.get_runs(filters=RunsFilter(job_name="train_function"))
        assert runs and all(PID_TAG in run.tags for run in runs), [run.tags for run in runs]

    # the new primary pre-annotates the unlabelled task in Label Studio (preannotation sensor -> run)
    (unlabelled,) = client.unlabeled_tasks(project, limit=10)
    predictions: list = []
    deadline = time.time() + 90
    while time.time() < deadline and not predictions:
        predictions = client.task_predictions(unlabelled.task_id)
        time.sleep(1)
    assert [(p["model_version"], p["label"]) for p in predictions] == [("platform-sentiment:v1", "positive")]
    assert 0.5 < predictions[0]["score"] <= 1.0

    down = loopml(platform_env, "down", timeout=120)
    assert "labelstudio" in down.stdout and "dagster-daemon" in down.stdout and "serving" in down.stdout
    after = loopml(platform_env, "status")
    assert "healthy" not in after.stdout
