"""`bentofile.yaml` builds the serving API as a Bento, and the built Bento served with `bentoml serve` answers an
invoke from the deployment table and model store of its LOOPML_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from loopml.apikeys import RIGHTS, create_key
from loopml.config import PROJECT_ROOT, get_settings
from loopml.deployments import DeploymentStore
from tests.conftest import free_port
from tests.real_server import server_tree, spawn_server, stop_server, wait_ready
from tests.serving_support import save_versions

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_the_built_bento_serves_an_invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    store = tmp_path / "bento-store"
    env = {**os.environ, "BENTOML_HOME": str(store), "BENTOML_DO_NOT_TRACK": "true"}
    built = subprocess.run(
        [bentoml, "build", "--output", "tag"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout + built.stderr
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("loopml:"), built.stdout
    (bento,) = (store / "bentos" / "loopml").glob(f"{tag.split(':')[1]}")
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "serving.service:LoopML"
    assert (bento / "src" / "serving" / "service.py").exists() and (bento / "src" / "loopml" / "db.py").exists()
    assert not list((bento / "src").rglob("*.db")), "no database or data in the Bento"

    monkeypatch.setenv("LOOPML_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LOOPML_DATABASE_URL", raising=False)
    settings = get_settings()
    settings.ensure_dirs()
    tags = save_versions(settings, "review-sentiment", 1)
    DeploymentStore(settings).set_primary("review-sentiment", tags[0], "bento test")
    _, key = create_key(settings, "bento", rights=RIGHTS)
    port = free_port()
    log_path = tmp_path / "bento.log"
    serve_env = {
        **env,
        "LOOPML_HOME": str(settings.home),
        "LOOPML_SERVING_GPU": "0",
        "LOOPML_SERVING_PORT": str(port),
    }
    serve_env.pop("LOOPML_DATABASE_URL", None)
    serve = [bentoml, "serve", tag, "--host", "127.0.0.1", "--port", str(port)]
    proc = spawn_server(serve, serve_env, log_path, cwd=tmp_path)  # not the checkout: the code comes from the Bento
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log_path)
        answer = requests.post(
            f"{url}/v1/functions/review-sentiment/invoke",
            json={"text": "a wonderful, moving film"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == tags[0] and answer.json()["label"] == "positive"
        workers = server_tree(proc)[1:]
        assert workers and all(Path(w.cwd()) == bento / "src" for w in workers), "the worker runs from the Bento"
    finally:
        stop_server(proc)
