"""A real ``bentoml serve serving.service:LoopML`` process: auth, invoke, hot reload, kill -9 durability."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from loopml.apikeys import create_key
from loopml.config import PROJECT_ROOT, Settings, get_settings
from loopml.deployments import DeploymentStore
from loopml.invocation_log import InvocationLog
from tests.conftest import free_port
from tests.serving_support import save_versions

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FUNCTION = "review-sentiment"
READY_TIMEOUT_S = 90.0


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    settings: Settings
    tags: list[str]
    key: str
    log_path: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def invoke(self, session: requests.Session, body: dict) -> requests.Response:
        return session.post(f"{self.url}/v1/functions/{FUNCTION}/invoke", json=body, headers=self.headers, timeout=10)


def server_tree(proc: subprocess.Popen) -> list[psutil.Process]:
    """The arbiter and its workers. Circus starts each worker in a session of its own (``setsid``), so a
    signal to the arbiter's process group does not reach them: they are found as descendants."""
    try:
        parent = psutil.Process(proc.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the arbiter (it stops its workers), then SIGKILL anything of the tree still there."""
    tree = server_tree(proc)
    if proc.poll() is None:
        proc.terminate()
    _, alive = psutil.wait_procs(tree, timeout=20)
    for process in alive:
        process.kill()
    proc.wait(10)


def serve_command(port: int) -> list[str]:
    """The documented start command (run from the repository root)."""
    bentoml = Path(sys.executable).with_name("bentoml")
    return [str(bentoml), "serve", "serving.service:LoopML", "--host", "127.0.0.1", "--port", str(port)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("serve-e2e")
    port = free_port()
    env = {
        **os.environ,
        "LOOPML_HOME": str(home),
        "BENTOML_HOME": str(home / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "LOOPML_SERVING_PORT": str(port),
        "LOOPML_SERVING_GPU": "0",
    }
    env.pop("LOOPML_DATABASE_URL", None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOPML_HOME", str(home))
        mp.delenv("LOOPML_DATABASE_URL", raising=False)
        settings = get_settings()
        settings.ensure_dirs()
        tags = save_versions(settings, FUNCTION, 2)
        DeploymentStore(settings).set_primary(FUNCTION, tags[0], "e2e")
        _, key = create_key(settings, "e2e")
        log_path = home / "serving.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                serve_command(port),
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                assert proc.poll() is None, f"bentoml serve exited: {log_path.read_text()[-3000:]}"
                try:
                    if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:  # not listening yet, or the worker is still starting
                    pass
                assert time.monotonic() < deadline, f"not ready in {READY_TIMEOUT_S} s: {log_path.read_text()[-3000:]}"
                time.sleep(0.2)
            yield Server(proc, url, settings, tags, key, log_path)
        finally:
            stop_server(proc)


def test_auth_and_invoke(server: Server) -> None:
    with requests.Session() as session:
        unauthenticated = session.post(f"{server.url}/v1/functions/{FUNCTION}/invoke", json={"text": "hi"}, timeout=10)
        assert unauthenticated.status_code == 401 and "API key" in unauthenticated.json()["detail"]
        assert session.get(f"{server.url}/metrics", timeout=10).status_code == 401
        assert session.get(f"{server.url}/metrics", headers=server.headers, timeout=10).status_code == 200
        assert session.get(f"{server.url}/healthz", timeout=10).status_code == 200
        response = server.invoke(session, {"text": "A wonderful, warm film."})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == "positive" and body["version"] == server.tags[0]
        assert InvocationLog(server.settings).get(body["invocation_id"]) is not None
        docs = session.get(f"{server.url}/docs", timeout=10)
        assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_default_limits(server: Server) -> None:
    """1 MiB texts and 256-text batches by default; beyond them 413, and the worker keeps serving."""
    limit = 1 << 20
    with requests.Session() as session:
        at_limit = server.invoke(session, {"text": "good film " * (limit // 10) + "x" * (limit % 10)})
        assert at_limit.status_code == 200, at_limit.text
        over = server.invoke(session, {"text": "x" * (limit + 1)})
        assert over.status_code == 413 and "LOOPML_MAX_TEXT_BYTES" in over.json()["detail"]
        too_many = server.invoke(session, {"texts": ["fine"] * 257})
        assert too_many.status_code == 413 and "LOOPML_MAX_BATCH" in too_many.json()["detail"]
        huge = server.invoke(session, {"texts": ["y" * (limit - 10)] * 20})  # 20 MiB: over the body limit
        assert huge.status_code == 413 and "LOOPML_MAX_REQUEST_BYTES" in huge.json()["detail"]
        assert server.invoke(session, {"text": "still serving"}).status_code == 200


def test_hot_reload_without_restart(server: Server) -> None:
    pid = server.proc.pid
    DeploymentStore(server.settings).set_primary(FUNCTION, server.tags[1], "e2e hot reload")
    started = time.monotonic()
    with requests.Session() as session:
        while server.invoke(session, {"text": "hello"}).json()["version"] != server.tags[1]:
            assert time.monotonic() - started < 1.5, "the new version was not served within 1.5 s"
            time.sleep(0.05)
    assert server.proc.poll() is None and server.proc.pid == pid


def test_acknowledged_invocations_survive_kill_9(server: Server) -> None:
    """Clients hammer the server; we SIGKILL all its processes mid-stream; every answered id is in the DB."""
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        with requests.Session() as session:
            i = 0
            while not stop.is_set():
                body = (
                    {"text": f"w{worker} call {i}"} if i % 2 else {"texts": [f"w{worker} b{i} {j}" for j in range(4)]}
                )
                try:
                    response = server.invoke(session, body)
                except requests.RequestException:
                    return  # the server is gone
                if response.status_code == 200:
                    payload = response.json()
                    ids = (
                        [r["invocation_id"] for r in payload["results"]]
                        if "results" in payload
                        else [payload["invocation_id"]]
                    )
                    with lock:
                        acknowledged.extend(ids)
                i += 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 400 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = server_tree(server.proc)
    assert len(tree) >= 2, "expected the arbiter and at least one worker"
    for process in tree:  # kill -9 the arbiter and every worker: no shutdown hook, no flush
        os.kill(process.pid, signal.SIGKILL)
    psutil.wait_procs(tree, timeout=10)
    server.proc.wait(10)
    stop.set()
    for thread in threads:
        thread.join(15)
    assert len(acknowledged) >= 400, f"only {len(acknowledged)} answers before the kill"
    stored = InvocationLog(server.settings).existing_ids(acknowledged)
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged invocations were lost"
