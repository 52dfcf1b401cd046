"""The platform as a user runs it: `loopml up` starts real services, the daemon's sensor trains by itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
        LOOPML_ANNOTATION_POLL_SECONDS="1",
    )
    yield env
    loopml(env, "down", timeout=120)


def test_up_create_annotate_and_the_daemon_trains_a_model(platform_env, monkeypatch) -> None:
    up = loopml(platform_env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "Label Studio" in up.stdout and "Dagster" in up.stdout
    status = loopml(platform_env, "status")
    assert status.stdout.count("healthy") == 3, status.stdout

    created = loopml(platform_env, "functions", "create", "platform-sentiment", "--labels", "positive,negative")
    assert created.returncode == 0, created.stdout + created.stderr

    for key in ("LOOPML_HOME", "LOOPML_LABELSTUDIO_PORT", "LOOPML_DAGSTER_PORT"):
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

    deadline = time.time() + 240
    while time.time() < deadline and not list_versions(settings, "platform-sentiment"):
        time.sleep(1)
    versions = list_versions(settings, "platform-sentiment")
    assert [v.version for v in versions] == ["v1"], (settings.run_dir / "dagster-daemon.log").read_text()[-3000:]
    assert versions[0].metadata["cv_accuracy"] >= 0.7

    down = loopml(platform_env, "down", timeout=120)
    assert "labelstudio" in down.stdout and "dagster-daemon" in down.stdout
    after = loopml(platform_env, "status")
    assert "healthy" not in after.stdout
