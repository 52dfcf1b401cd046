"""The example Kubernetes manifests of docs/deploy/ stay true to the code: what they run exists, the settings they
pass are ones LoopML reads, the run launcher config validates, the credentials Job writes what LoopML loads.
(No Kubernetes cluster here: docs/deploy.md says what was tested where.)"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loopml.config import PROJECT_ROOT

K8S = PROJECT_ROOT / "docs" / "deploy" / "k8s"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((path.name, document))
    return found


def _containers() -> list[dict[str, Any]]:
    found = []
    for _, document in _documents():
        spec = document.get("spec", {}).get("template", {}).get("spec", {})
        found.extend(spec.get("containers", []))
    return found


def _secret(name: str) -> dict[str, str]:
    for _, document in _documents():
        if document.get("kind") == "Secret" and document["metadata"]["name"] == name:
            return document["stringData"]
    raise AssertionError(f"no Secret {name}")


def test_every_manifest_parses_and_every_container_runs_loopml_code() -> None:
    assert {"00-config.yaml", "serving.yaml", "workers.yaml", "dagster-values.yaml"} <= {
        p.name for p in K8S.glob("*.yaml")
    }
    containers = _containers()
    assert {c["name"] for c in containers} >= {"serving", "worker", "credentials"}
    from loopml.cli import main as cli

    for container in containers:
        command = container["command"]
        if command[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(command[2]) is not None, command
        elif command[0] == "loopml":
            sub = cli.commands[command[1]]  # type: ignore[attr-defined]
            options = {o for p in sub.params for o in p.opts}
            assert {a for a in command[2:] if a.startswith("-")} <= options, command


def test_the_settings_passed_are_ones_loopml_reads() -> None:
    code = "\n".join(p.read_text() for p in (PROJECT_ROOT / "loopml").glob("*.py"))
    code += (PROJECT_ROOT / "pipelines" / "celery_runs.py").read_text()
    for name in _secret("loopml-env"):
        assert re.search(rf"\b{name}\b", code), f"{name} is not a LoopML setting"
    for container in _containers():
        for entry in container.get("env", []):
            if entry["name"].startswith("LOOPML_"):
                assert re.search(rf"\b{entry['name']}\b", code), entry["name"]


def test_the_dagster_values_name_a_launcher_that_loads_with_that_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._serdes.config_class import ConfigurableClassData

    from pipelines.celery_runs import LoopMLCeleryRunLauncher

    values = yaml.safe_load((K8S / "dagster-values.yaml").read_text())
    assert values["runLauncher"]["type"] == "CustomRunLauncher"
    custom = values["runLauncher"]["config"]["customRunLauncher"]
    monkeypatch.setenv("LOOPML_BROKER_URL", "redis://redis.example:6379/0")
    launcher = ConfigurableClassData(custom["module"], custom["class"], yaml.safe_dump(custom["config"])).rehydrate(
        as_type=LoopMLCeleryRunLauncher
    )
    assert isinstance(launcher, LoopMLCeleryRunLauncher)
    assert launcher.broker == "redis://redis.example:6379/0" and launcher.celery.conf.task_acks_late is True
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    args = deployment["dagsterApiGrpcArgs"]
    module = importlib.import_module(args[args.index("--module-name") + 1])
    assert hasattr(module, args[args.index("--attribute") + 1])


def test_the_credentials_job_writes_what_loopml_loads(tmp_path: Path) -> None:
    from loopml.config import get_settings
    from loopml.labelstudio_server import load_credentials

    (job,) = [d for _, d in _documents() if d.get("kind") == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    script = container["command"][-1]
    admin = _secret("labelstudio-admin")
    env = {**os.environ, **admin, "LOOPML_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    creds = load_credentials(get_settings({"LOOPML_HOME": str(tmp_path)}))
    assert creds is not None
    assert (creds.username, creds.password, creds.api_key) == (
        admin["LABEL_STUDIO_USERNAME"],
        admin["LABEL_STUDIO_PASSWORD"],
        admin["LABEL_STUDIO_USER_TOKEN"],
    )
